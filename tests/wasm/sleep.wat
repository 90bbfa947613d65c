;; sleep.wat -- hostile: sleeps 60 s in poll_oneoff (one relative monotonic clock subscription), then writes {"woke": true} and exits 0. Only a deadline that ends host calls stops it before then.
(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 256) "{\"woke\": true}")
  (func (export "_start")
    ;; the subscription at 0 (48 bytes): userdata 0, tag 0 (clock), clock id 1 (monotonic), timeout 60 s, flags 0
    (i32.store (i32.const 16) (i32.const 1))
    (i64.store (i32.const 24) (i64.const 60000000000))
    (drop (call $poll (i32.const 0) (i32.const 128) (i32.const 1) (i32.const 192)))
    (i32.store (i32.const 240) (i32.const 256)) (i32.store (i32.const 244) (i32.const 14))
    (drop (call $fd_write (i32.const 1) (i32.const 240) (i32.const 1) (i32.const 248)))))
