;; echo.wat -- copies stdin to stdout unchanged (64 KiB fd_read chunks, fd_write loop for partial writes), exits 0; exits 1 on an I/O error.
(module
  (import "wasi_snapshot_preview1" "fd_read"
    (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit"
    (func $proc_exit (param i32)))
  ;; page 0: iovec at 0..8, nread/nwritten at 8..12; page 1: the 64 KiB chunk buffer
  (memory (export "memory") 2)
  (func (export "_start")
    (local $n i32) (local $p i32) (local $w i32)
    (loop $read
      (i32.store (i32.const 0) (i32.const 65536))
      (i32.store (i32.const 4) (i32.const 65536))
      (if (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8))
        (then (call $proc_exit (i32.const 1))))
      (local.set $n (i32.load (i32.const 8)))
      (if (i32.eqz (local.get $n)) (then (return)))                 ;; EOF
      (if (i32.gt_u (local.get $n) (i32.const 65536)) (then (local.set $n (i32.const 65536))))
      (local.set $p (i32.const 65536))
      (loop $write
        (i32.store (i32.const 0) (local.get $p))
        (i32.store (i32.const 4) (local.get $n))
        (if (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))
          (then (call $proc_exit (i32.const 1))))
        (local.set $w (i32.load (i32.const 8)))
        (if (i32.eqz (local.get $w)) (then (call $proc_exit (i32.const 1))))
        (if (i32.gt_u (local.get $w) (local.get $n)) (then (local.set $w (local.get $n))))
        (local.set $p (i32.add (local.get $p) (local.get $w)))
        (local.set $n (i32.sub (local.get $n) (local.get $w)))
        (br_if $write (local.get $n)))
      (br $read))))
