;; write_then_count.wat -- writes {} to stdout, then counts to 3,000,000 (a few million instructions, more than a run
;; on its caller's thread may take before it yields to a runner thread), then returns.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "{}")
  (func (export "_start")
    (local $n i32)
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 2))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (loop $count
      (local.set $n (i32.add (local.get $n) (i32.const 1)))
      (br_if $count (i32.lt_u (local.get $n) (i32.const 3000000))))))
