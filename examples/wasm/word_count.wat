;; word_count.wat -- agenthub WASM sandbox example (WASI command module, wasi_snapshot_preview1).
;;
;; Reads one JSON document from stdin, finds the first string value whose key is exactly
;; "text" (at any nesting depth) -- or, if there is none, the first string value whose key is
;; "description" -- and writes {"words":N} to stdout, where N is the number of maximal runs of
;; non-whitespace characters in that string. Whitespace is space, \t, \n, \r and the JSON escapes
;; \n \t \r; every other escape (\" \\ \uXXXX ...) counts as a non-whitespace character.
;; If no such string exists: one line on stderr and proc_exit(1).
;;
;; The scanner is deliberately lenient: it does not validate the JSON, it only tokenises strings
;; (honouring backslash escapes) and treats a string followed by optional whitespace and ':' as a
;; key. It never reads outside the input, so it cannot trap on malformed input.
;;
;; Memory layout (page 0):
;;   0..8      iovec {buf, len} for fd_read / fd_write
;;   8..12     nread / nwritten result
;;   64..      constant strings (data segments below)
;;   320..352  output buffer
;;   512..768  byte class table
;;   1024..    stdin contents (memory grows as needed, 64 KiB per read)
(module
  (import "wasi_snapshot_preview1" "fd_read"
    (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit"
    (func $proc_exit (param i32)))

  (memory (export "memory") 1)

  (data (i32.const 64) "text")                    ;; 4 bytes
  (data (i32.const 72) "description")             ;; 11 bytes
  (data (i32.const 96) "{\"words\":")             ;; 9 bytes
  (data (i32.const 128) "word_count: no \"text\" or \"description\" string in the input\n") ;; 59
  (data (i32.const 192) "word_count: cannot read stdin\n")     ;; 30
  (data (i32.const 224) "word_count: input too large\n")       ;; 28
  (data (i32.const 256) "word_count: cannot write stdout\n")   ;; 32

  ;; Byte class table at 512..768, indexed by byte value:
  ;;   bit 0 (1): JSON whitespace (space \t \n \r)
  ;;   bit 1 (2): escape letter that means whitespace (n t r, as in \n \t \r)
  ;;   bit 2 (4): string special ('"' and '\\')
  (data (i32.const 521) "\01\01")        ;; 512+9 \t, 512+10 \n
  (data (i32.const 525) "\01")           ;; 512+13 \r
  (data (i32.const 544) "\01")           ;; 512+32 space
  (data (i32.const 546) "\04")           ;; 512+34 '"'
  (data (i32.const 604) "\04")           ;; 512+92 '\\'
  (data (i32.const 622) "\02")           ;; 512+110 'n'
  (data (i32.const 626) "\02")           ;; 512+114 'r'
  (data (i32.const 628) "\02")           ;; 512+116 't'

  (global $len (mut i32) (i32.const 0))     ;; number of input bytes read so far
  (global $str_end (mut i32) (i32.const 0)) ;; set by $count_string

  ;; ---------------------------------------------------------------- I/O helpers

  ;; Write all n bytes at p to fd, looping over partial writes. Returns 0 on success.
  (func $write_all (param $fd i32) (param $p i32) (param $n i32) (result i32)
    (local $w i32)
    (block $done
      (loop $more
        (br_if $done (i32.eqz (local.get $n)))
        (i32.store (i32.const 0) (local.get $p))
        (i32.store (i32.const 4) (local.get $n))
        (if (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))
          (then (return (i32.const 1))))
        (local.set $w (i32.load (i32.const 8)))
        ;; no progress would loop forever: treat as an error
        (if (i32.eqz (local.get $w)) (then (return (i32.const 1))))
        (if (i32.gt_u (local.get $w) (local.get $n)) (then (local.set $w (local.get $n))))
        (local.set $p (i32.add (local.get $p) (local.get $w)))
        (local.set $n (i32.sub (local.get $n) (local.get $w)))
        (br $more)))
    (i32.const 0))

  ;; Write a message to stderr (best effort) and exit with the given code.
  (func $fail (param $msg i32) (param $n i32) (param $code i32)
    (drop (call $write_all (i32.const 2) (local.get $msg) (local.get $n)))
    (call $proc_exit (local.get $code))
    (unreachable))

  ;; Read stdin until EOF into memory at 1024, growing memory so that there are always
  ;; 64 KiB free before each fd_read. Sets $len.
  (func $read_all
    (local $need i64)
    (local $pages i32)
    (block $eof
      (loop $more
        ;; pages needed to hold 1024 + len + 65536 bytes (computed in i64: no overflow)
        (local.set $need
          (i64.add (i64.extend_i32_u (global.get $len)) (i64.const 132095))) ;; ceil((1024 + len + 65536) / 65536)
        (local.set $pages (i32.wrap_i64 (i64.shr_u (local.get $need) (i64.const 16))))
        (if (i32.gt_u (local.get $pages) (memory.size))
          (then
            (if (i32.eq (memory.grow (i32.sub (local.get $pages) (memory.size))) (i32.const -1))
              (then (call $fail (i32.const 224) (i32.const 28) (i32.const 1))))))
        (i32.store (i32.const 0) (i32.add (i32.const 1024) (global.get $len)))
        (i32.store (i32.const 4) (i32.const 65536))
        (if (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8))
          (then (call $fail (i32.const 192) (i32.const 30) (i32.const 1))))
        (br_if $eof (i32.eqz (i32.load (i32.const 8))))
        (global.set $len (i32.add (global.get $len)
          ;; never trust the host for more than we asked for
          (select (i32.const 65536) (i32.load (i32.const 8))
                  (i32.gt_u (i32.load (i32.const 8)) (i32.const 65536)))))
        (br $more))))

  ;; ---------------------------------------------------------------- scanning helpers

  (func $is_ws (param $c i32) (result i32)
    (i32.and (i32.load8_u offset=512 (local.get $c)) (i32.const 1)))

  ;; First position >= p that is not JSON whitespace (or end).
  (func $skip_ws (param $p i32) (param $end i32) (result i32)
    (block $done
      (loop $more
        (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
        (br_if $done (i32.eqz (call $is_ws (i32.load8_u (local.get $p)))))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $more)))
    (local.get $p))

  ;; p is just after an opening quote. Returns the position of the closing quote,
  ;; or end if the string is unterminated.
  (func $string_end (param $p i32) (param $end i32) (result i32)
    (loop $more
      (if (i32.ge_u (local.get $p) (local.get $end)) (then (return (local.get $end))))
      ;; fast path: ordinary byte (class bit 2 clear)
      (if (i32.eqz (i32.and (i32.load8_u offset=512 (i32.load8_u (local.get $p))) (i32.const 4)))
        (then
          (local.set $p (i32.add (local.get $p) (i32.const 1)))
          (br $more)))
      (if (i32.eq (i32.load8_u (local.get $p)) (i32.const 34)) (then (return (local.get $p))))
      (local.set $p (i32.add (local.get $p) (i32.const 2)))   ;; backslash + escaped byte
      (br $more))
    (unreachable))

  ;; Byte-wise equality of [a, a+alen) and [b, b+blen).
  (func $eq (param $a i32) (param $alen i32) (param $b i32) (param $blen i32) (result i32)
    (if (i32.ne (local.get $alen) (local.get $blen)) (then (return (i32.const 0))))
    (block $done
      (loop $more
        (br_if $done (i32.eqz (local.get $alen)))
        (if (i32.ne (i32.load8_u (local.get $a)) (i32.load8_u (local.get $b)))
          (then (return (i32.const 0))))
        (local.set $a (i32.add (local.get $a) (i32.const 1)))
        (local.set $b (i32.add (local.get $b) (i32.const 1)))
        (local.set $alen (i32.sub (local.get $alen) (i32.const 1)))
        (br $more)))
    (i32.const 1))

  ;; p is just after the opening quote of a string value. Counts the words in it in a single
  ;; pass using the class table at 512, and sets $str_end to the position of the closing quote
  ;; (0 if the string is unterminated).
  (func $count_string (param $p i32) (param $end i32) (result i32)
    (local $cls i32) (local $word i32) (local $in i32) (local $n i32)
    (global.set $str_end (i32.const 0))
    (block $done
      (loop $more
        (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
        (local.set $cls (i32.load8_u offset=512 (i32.load8_u (local.get $p))))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (if (i32.and (local.get $cls) (i32.const 4))
          (then
            ;; closing quote: done
            (if (i32.eq (i32.load8_u (i32.sub (local.get $p) (i32.const 1))) (i32.const 34))
              (then
                (global.set $str_end (i32.sub (local.get $p) (i32.const 1)))
                (br $done)))
            ;; backslash: the escaped letter decides (bit 1: \n \t \r are whitespace);
            ;; any other escape, or a backslash at the end of the input, is a word character
            (local.set $cls (i32.const 0))
            (if (i32.lt_u (local.get $p) (local.get $end))
              (then
                (local.set $cls
                  (i32.shr_u (i32.load8_u offset=512 (i32.load8_u (local.get $p))) (i32.const 1)))
                (local.set $p (i32.add (local.get $p) (i32.const 1)))))))
        ;; bit 0 of cls: whitespace
        (local.set $word (i32.eqz (i32.and (local.get $cls) (i32.const 1))))
        (local.set $n (i32.add (local.get $n) (i32.and (local.get $word) (i32.eqz (local.get $in)))))
        (local.set $in (local.get $word))
        (br $more)))
    (local.get $n))

  ;; Write {"words":n} to stdout; exit(1) if stdout cannot be written.
  (func $emit (param $n i32)
    (local $p i32) (local $q i32)
    ;; digits are produced backwards, ending at 350 (at most 10 digits: 340..350)
    (local.set $p (i32.const 350))
    (loop $digits
      (local.set $p (i32.sub (local.get $p) (i32.const 1)))
      (i32.store8 (local.get $p)
        (i32.add (i32.const 48) (i32.rem_u (local.get $n) (i32.const 10))))
      (local.set $n (i32.div_u (local.get $n) (i32.const 10)))
      (br_if $digits (local.get $n)))
    ;; prefix {"words": goes right before the digits (>= 331), "}" right after (350)
    (local.set $q (i32.sub (local.get $p) (i32.const 9)))
    (memory.copy (local.get $q) (i32.const 96) (i32.const 9))
    (i32.store8 (i32.const 350) (i32.const 125))
    (if (call $write_all (i32.const 1) (local.get $q) (i32.sub (i32.const 351) (local.get $q)))
      (then (call $fail (i32.const 256) (i32.const 32) (i32.const 1)))))

  ;; ---------------------------------------------------------------- entry point

  (func (export "_start")
    (local $p i32) (local $end i32) (local $s i32) (local $e i32) (local $q i32)
    (local $klen i32) (local $is_text i32) (local $is_desc i32)
    (local $vs i32) (local $n i32) (local $have_desc i32) (local $desc_n i32)
    (call $read_all)
    (local.set $p (i32.const 1024))
    (local.set $end (i32.add (i32.const 1024) (global.get $len)))
    (block $scanned
      (loop $scan
        (br_if $scanned (i32.ge_u (local.get $p) (local.get $end)))
        (if (i32.ne (i32.load8_u (local.get $p)) (i32.const 34))
          (then
            (local.set $p (i32.add (local.get $p) (i32.const 1)))
            (br $scan)))
        ;; a string: [s, e)
        (local.set $s (i32.add (local.get $p) (i32.const 1)))
        (local.set $e (call $string_end (local.get $s) (local.get $end)))
        (br_if $scanned (i32.ge_u (local.get $e) (local.get $end)))   ;; unterminated
        (local.set $p (i32.add (local.get $e) (i32.const 1)))
        (local.set $q (call $skip_ws (local.get $p) (local.get $end)))
        (if (i32.lt_u (local.get $q) (local.get $end))
          (then
            (if (i32.eq (i32.load8_u (local.get $q)) (i32.const 58))     ;; ':' => it was a key
              (then
                (local.set $klen (i32.sub (local.get $e) (local.get $s)))
                (local.set $is_text
                  (call $eq (local.get $s) (local.get $klen) (i32.const 64) (i32.const 4)))
                (local.set $is_desc
                  (i32.and (i32.eqz (local.get $have_desc))
                    (call $eq (local.get $s) (local.get $klen) (i32.const 72) (i32.const 11))))
                (if (i32.or (local.get $is_text) (local.get $is_desc))
                  (then
                    (local.set $vs
                      (call $skip_ws (i32.add (local.get $q) (i32.const 1)) (local.get $end)))
                    (if (i32.lt_u (local.get $vs) (local.get $end))
                      (then
                        (if (i32.eq (i32.load8_u (local.get $vs)) (i32.const 34))
                          (then
                            (local.set $n
                              (call $count_string (i32.add (local.get $vs) (i32.const 1))
                                                  (local.get $end)))
                            (if (global.get $str_end)          ;; terminated string
                              (then
                                (if (local.get $is_text)
                                  (then
                                    (call $emit (local.get $n))
                                    (return)))
                                (local.set $have_desc (i32.const 1))
                                (local.set $desc_n (local.get $n))))))))))))))
        (br $scan)))
    (if (local.get $have_desc)
      (then
        (call $emit (local.get $desc_n))
        (return)))
    (call $fail (i32.const 128) (i32.const 59) (i32.const 1)))
)
