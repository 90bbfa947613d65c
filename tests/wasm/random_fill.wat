;; random_fill.wat -- hostile: grows its memory by 64 MiB and fills that with random_get four times over, in straight-line code (no loop for an epoch check to stop), then writes {"filled": true} and exits 0. wasmtime's own random_get takes about a quarter of a second for each, in native code.
(module
  (import "wasi_snapshot_preview1" "random_get" (func $random_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 256) "{\"filled\": true}")
  (func (export "_start")
    (if (i32.eq (memory.grow (i32.const 1024)) (i32.const -1)) (then (unreachable)))
    (drop (call $random_get (i32.const 65536) (i32.const 67108864)))
    (drop (call $random_get (i32.const 65536) (i32.const 67108864)))
    (drop (call $random_get (i32.const 65536) (i32.const 67108864)))
    (drop (call $random_get (i32.const 65536) (i32.const 67108864)))
    (i32.store (i32.const 240) (i32.const 256)) (i32.store (i32.const 244) (i32.const 16))
    (drop (call $fd_write (i32.const 1) (i32.const 240) (i32.const 1) (i32.const 248)))))
