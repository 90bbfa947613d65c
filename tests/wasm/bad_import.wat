;; bad_import.wat -- WASI-looking module that also imports env.host_secret (func () -> i32); must fail to link in the sandbox.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit"
    (func $proc_exit (param i32)))
  (import "env" "host_secret"
    (func $host_secret (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (call $proc_exit (call $host_secret))))
