;; escape.wat -- tries to escape the sandbox (fd_prestat_get(3), path_open(3,"/etc/passwd"), environ_sizes_get, sock_accept(3)), prints {"prestat_errno":E1,"open_errno":E2,"environ_count":N,"accept_errno":E3}, exits 0.
(module
  (import "wasi_snapshot_preview1" "fd_prestat_get"
    (func $fd_prestat_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get"
    (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "sock_accept"
    (func $sock_accept (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))

  ;; 0..8 iovec, 8..12 nwritten, 16..24 prestat buffer, 24 opened fd, 28 environ count,
  ;; 32 environ buffer size, 36 accepted fd, 64.. constant strings, 200..216 digits, 256.. output
  (memory (export "memory") 1)
  (data (i32.const 64) "/etc/passwd")                  ;; 11
  (data (i32.const 80) "{\"prestat_errno\":")          ;; 17
  (data (i32.const 112) ",\"open_errno\":")            ;; 14
  (data (i32.const 128) ",\"environ_count\":")         ;; 17
  (data (i32.const 160) ",\"accept_errno\":")          ;; 16

  (global $out (mut i32) (i32.const 256))

  (func $append (param $src i32) (param $n i32)
    (memory.copy (global.get $out) (local.get $src) (local.get $n))
    (global.set $out (i32.add (global.get $out) (local.get $n))))

  (func $append_u32 (param $x i32)
    (local $p i32)
    (local.set $p (i32.const 216))
    (loop $digits
      (local.set $p (i32.sub (local.get $p) (i32.const 1)))
      (i32.store8 (local.get $p) (i32.add (i32.const 48) (i32.rem_u (local.get $x) (i32.const 10))))
      (local.set $x (i32.div_u (local.get $x) (i32.const 10)))
      (br_if $digits (local.get $x)))
    (call $append (local.get $p) (i32.sub (i32.const 216) (local.get $p))))

  (func (export "_start")
    (local $prestat i32) (local $open i32) (local $accept i32) (local $p i32) (local $n i32) (local $w i32)
    ;; 1. is there a preopened directory at fd 3?
    (local.set $prestat (call $fd_prestat_get (i32.const 3) (i32.const 16)))
    ;; 2. open /etc/passwd relative to fd 3 (dirflags 0, oflags 0, rights fd_read, fdflags 0)
    (local.set $open
      (call $path_open (i32.const 3) (i32.const 0) (i32.const 64) (i32.const 11) (i32.const 0)
                       (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 24)))
    ;; 3. how many environment variables can we see?
    (i32.store (i32.const 28) (i32.const 0))
    (drop (call $environ_sizes_get (i32.const 28) (i32.const 32)))
    ;; 4. accept a connection on fd 3
    (local.set $accept (call $sock_accept (i32.const 3) (i32.const 0) (i32.const 36)))

    (call $append (i32.const 80) (i32.const 17))
    (call $append_u32 (local.get $prestat))
    (call $append (i32.const 112) (i32.const 14))
    (call $append_u32 (local.get $open))
    (call $append (i32.const 128) (i32.const 17))
    (call $append_u32 (i32.load (i32.const 28)))
    (call $append (i32.const 160) (i32.const 16))
    (call $append_u32 (local.get $accept))
    (i32.store8 (global.get $out) (i32.const 125))      ;; '}'
    (global.set $out (i32.add (global.get $out) (i32.const 1)))

    (local.set $p (i32.const 256))
    (local.set $n (i32.sub (global.get $out) (i32.const 256)))
    (block $done
      (loop $more
        (br_if $done (i32.eqz (local.get $n)))
        (i32.store (i32.const 0) (local.get $p))
        (i32.store (i32.const 4) (local.get $n))
        (br_if $done (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
        (local.set $w (i32.load (i32.const 8)))
        (br_if $done (i32.eqz (local.get $w)))
        (local.set $p (i32.add (local.get $p) (local.get $w)))
        (local.set $n (i32.sub (local.get $n) (local.get $w)))
        (br $more)))))
