;; exit_code.wat -- writes "exit_code: failing on purpose\n" to stderr and calls proc_exit(3).
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit"
    (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "exit_code: failing on purpose\n")   ;; 30 bytes
  (func (export "_start")
    (local $p i32) (local $n i32) (local $w i32)
    (local.set $p (i32.const 64))
    (local.set $n (i32.const 30))
    (block $done
      (loop $more
        (br_if $done (i32.eqz (local.get $n)))
        (i32.store (i32.const 0) (local.get $p))
        (i32.store (i32.const 4) (local.get $n))
        (br_if $done (call $fd_write (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 8)))
        (local.set $w (i32.load (i32.const 8)))
        (br_if $done (i32.eqz (local.get $w)))
        (local.set $p (i32.add (local.get $p) (local.get $w)))
        (local.set $n (i32.sub (local.get $n) (local.get $w)))
        (br $more)))
    (call $proc_exit (i32.const 3))))
