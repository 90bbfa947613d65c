;; stdout_flood.wat -- hostile: writes a 64 KiB buffer of 'x' to stdout in an endless loop (ignores write errors).
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (func (export "_start")
    ;; buffer = page 1 (65536..131072), filled with 'x'
    (memory.fill (i32.const 65536) (i32.const 120) (i32.const 65536))
    (loop $forever
      ;; iovec at 0: {buf = 65536, len = 65536}; nwritten at 8
      (i32.store (i32.const 0) (i32.const 65536))
      (i32.store (i32.const 4) (i32.const 65536))
      (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
      (br $forever))))
