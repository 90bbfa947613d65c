;; bad_pointers.wat -- hands fd_write/fd_read pointers outside its memory and too many iovecs; exits 0 with {"ok":true} only if every call returned the expected errno (EFAULT 21, EINVAL 28), else proc_exit(10 + the failing check).
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "{\"ok\":true}")
  (func $expect (param $got i32) (param $want i32) (param $check i32)
    (if (i32.ne (local.get $got) (local.get $want)) (then (call $proc_exit (i32.add (i32.const 10) (local.get $check))))))
  (func (export "_start")
    ;; a valid iovec at 0: 11 bytes at 100
    (i32.store (i32.const 0) (i32.const 100)) (i32.store (i32.const 4) (i32.const 11))
    ;; the result pointer just below address 0 (a negative i32)
    (call $expect (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const -4)) (i32.const 21) (i32.const 1))
    (call $expect (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const -4)) (i32.const 21) (i32.const 2))
    ;; the iovec array itself outside memory
    (call $expect (call $fd_write (i32.const 1) (i32.const -8) (i32.const 1) (i32.const 8)) (i32.const 21) (i32.const 3))
    ;; a buffer running past the end of memory
    (i32.store (i32.const 16) (i32.const 65530)) (i32.store (i32.const 20) (i32.const 100))
    (call $expect (call $fd_write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 8)) (i32.const 21) (i32.const 4))
    ;; far too many iovecs
    (call $expect (call $fd_write (i32.const 1) (i32.const 0) (i32.const 100000) (i32.const 8)) (i32.const 28) (i32.const 5))
    (call $expect (call $fd_write (i32.const 1) (i32.const 0) (i32.const -1) (i32.const 8)) (i32.const 28) (i32.const 6))
    ;; then the answer, through the valid iovec
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
