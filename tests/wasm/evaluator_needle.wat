;; An acceptance-check evaluator for tests: reads its input ({"task": ..., "result": ...} as JSON) from stdin and
;; exits 0 (pass) when it contains the bytes of the needle below, else writes a line on stderr and exits 1.
(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 2)
  (data (i32.const 64) "\"worker\": \"careful\"")  ;; 19 bytes
  (data (i32.const 128) "the result was not made by the careful worker\n")  ;; 46 bytes
  (func (export "_start")
    (local $len i32) (local $i i32) (local $j i32)
    ;; read stdin into 1024.. (at most 64 KiB)
    (block $eof
      (loop $read
        (i32.store (i32.const 0) (i32.add (i32.const 1024) (local.get $len)))
        (i32.store (i32.const 4) (i32.sub (i32.const 65536) (local.get $len)))
        (br_if $eof (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
        (br_if $eof (i32.eqz (i32.load (i32.const 8))))
        (local.set $len (i32.add (local.get $len) (i32.load (i32.const 8))))
        (br_if $eof (i32.ge_u (local.get $len) (i32.const 65536)))
        (br $read)))
    ;; naive search for the needle
    (block $absent
      (loop $start
        (br_if $absent (i32.gt_s (i32.add (local.get $i) (i32.const 19)) (local.get $len)))
        (local.set $j (i32.const 0))
        (block $mismatch
          (loop $cmp
            (br_if $mismatch (i32.ne (i32.load8_u (i32.add (i32.const 1024) (i32.add (local.get $i) (local.get $j))))
                                     (i32.load8_u (i32.add (i32.const 64) (local.get $j)))))
            (local.set $j (i32.add (local.get $j) (i32.const 1)))
            (if (i32.eq (local.get $j) (i32.const 19)) (then (call $proc_exit (i32.const 0)) (unreachable)))
            (br $cmp)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $start)))
    (i32.store (i32.const 0) (i32.const 128))
    (i32.store (i32.const 4) (i32.const 46))
    (drop (call $fd_write (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 8)))
    (call $proc_exit (i32.const 1))))
