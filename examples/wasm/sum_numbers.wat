;; sum_numbers.wat -- agenthub WASM sandbox example (WASI command module, wasi_snapshot_preview1).
;;
;; Reads one JSON document from stdin and finds the first key "numbers" (at any nesting depth)
;; whose value is a JSON array. Every element must be a JSON integer (optional '-', decimal
;; digits, fits in i64). Writes {"count":C,"sum":S,"min":A,"max":B} to stdout; for an empty
;; array min and max are null. Keys "numbers" whose value is not an array are skipped.
;; Failures (one line on stderr starting with "sum_numbers: ", then proc_exit(1)):
;;   no "numbers" array; an element that is not an integer (fraction, exponent, string,
;;   nested array, ...); an integer outside i64; a sum that overflows i64; an unterminated array.
;;
;; Like word_count.wat the scanner is lenient (no full JSON validation) but never reads outside
;; the input, so it cannot trap on malformed input.
;;
;; Memory layout (page 0):
;;   0..8      iovec {buf, len} for fd_read / fd_write
;;   8..12     nread / nwritten result
;;   64..466   constant strings (data segments below)
;;   480..504  scratch for decimal digits
;;   512..1024 output buffer
;;   1024..    stdin contents (memory grows as needed, 64 KiB per read)
(module
  (import "wasi_snapshot_preview1" "fd_read"
    (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit"
    (func $proc_exit (param i32)))

  (memory (export "memory") 1)

  (data (i32.const 64) "numbers")                 ;; 7
  (data (i32.const 80) "{\"count\":")             ;; 9
  (data (i32.const 96) ",\"sum\":")               ;; 7
  (data (i32.const 104) ",\"min\":")              ;; 7
  (data (i32.const 112) ",\"max\":")              ;; 7
  (data (i32.const 120) "null")                   ;; 4
  (data (i32.const 128) "sum_numbers: no \"numbers\" array in the input\n")               ;; 45
  (data (i32.const 176) "sum_numbers: \"numbers\" array holds a non-integer value\n")     ;; 55
  (data (i32.const 240) "sum_numbers: integer out of range\n")                            ;; 34
  (data (i32.const 280) "sum_numbers: sum overflows i64\n")                               ;; 31
  (data (i32.const 320) "sum_numbers: unterminated \"numbers\" array\n")                  ;; 42
  (data (i32.const 368) "sum_numbers: cannot read stdin\n")                               ;; 31
  (data (i32.const 400) "sum_numbers: input too large\n")                                 ;; 29
  (data (i32.const 432) "sum_numbers: cannot write stdout\n")                             ;; 33

  (global $len (mut i32) (i32.const 0))     ;; number of input bytes read so far
  (global $out (mut i32) (i32.const 512))   ;; output write position

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
    (local $pages i32)
    (block $eof
      (loop $more
        (local.set $pages (i32.wrap_i64 (i64.shr_u
          (i64.add (i64.extend_i32_u (global.get $len)) (i64.const 132095))  ;; ceil((1024+len+65536)/65536)
          (i64.const 16))))
        (if (i32.gt_u (local.get $pages) (memory.size))
          (then
            (if (i32.eq (memory.grow (i32.sub (local.get $pages) (memory.size))) (i32.const -1))
              (then (call $fail (i32.const 400) (i32.const 29) (i32.const 1))))))
        (i32.store (i32.const 0) (i32.add (i32.const 1024) (global.get $len)))
        (i32.store (i32.const 4) (i32.const 65536))
        (if (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8))
          (then (call $fail (i32.const 368) (i32.const 31) (i32.const 1))))
        (br_if $eof (i32.eqz (i32.load (i32.const 8))))
        (global.set $len (i32.add (global.get $len)
          (select (i32.const 65536) (i32.load (i32.const 8))
                  (i32.gt_u (i32.load (i32.const 8)) (i32.const 65536)))))
        (br $more))))

  ;; ---------------------------------------------------------------- output helpers

  (func $append (param $src i32) (param $n i32)
    (memory.copy (global.get $out) (local.get $src) (local.get $n))
    (global.set $out (i32.add (global.get $out) (local.get $n))))

  (func $append_i64 (param $x i64)
    (local $p i32)
    (if (i64.lt_s (local.get $x) (i64.const 0))
      (then
        (i32.store8 (global.get $out) (i32.const 45))              ;; '-'
        (global.set $out (i32.add (global.get $out) (i32.const 1)))
        ;; 0 - x as an unsigned value is |x|, also for i64 min
        (local.set $x (i64.sub (i64.const 0) (local.get $x)))))
    (local.set $p (i32.const 504))
    (loop $digits
      (local.set $p (i32.sub (local.get $p) (i32.const 1)))
      (i64.store8 (local.get $p)
        (i64.add (i64.const 48) (i64.rem_u (local.get $x) (i64.const 10))))
      (local.set $x (i64.div_u (local.get $x) (i64.const 10)))
      (br_if $digits (i64.ne (local.get $x) (i64.const 0))))
    (call $append (local.get $p) (i32.sub (i32.const 504) (local.get $p))))

  (func $emit (param $count i64) (param $sum i64) (param $min i64) (param $max i64)
    (global.set $out (i32.const 512))
    (call $append (i32.const 80) (i32.const 9))
    (call $append_i64 (local.get $count))
    (call $append (i32.const 96) (i32.const 7))
    (call $append_i64 (local.get $sum))
    (call $append (i32.const 104) (i32.const 7))
    (if (i64.eqz (local.get $count))
      (then (call $append (i32.const 120) (i32.const 4)))
      (else (call $append_i64 (local.get $min))))
    (call $append (i32.const 112) (i32.const 7))
    (if (i64.eqz (local.get $count))
      (then (call $append (i32.const 120) (i32.const 4)))
      (else (call $append_i64 (local.get $max))))
    (i32.store8 (global.get $out) (i32.const 125))                 ;; '}'
    (global.set $out (i32.add (global.get $out) (i32.const 1)))
    (if (call $write_all (i32.const 1) (i32.const 512) (i32.sub (global.get $out) (i32.const 512)))
      (then (call $fail (i32.const 432) (i32.const 33) (i32.const 1)))))

  ;; ---------------------------------------------------------------- scanning helpers

  (func $is_ws (param $c i32) (result i32)
    (i32.or
      (i32.or (i32.eq (local.get $c) (i32.const 32)) (i32.eq (local.get $c) (i32.const 9)))
      (i32.or (i32.eq (local.get $c) (i32.const 10)) (i32.eq (local.get $c) (i32.const 13)))))

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
    (local $c i32)
    (loop $more
      (if (i32.ge_u (local.get $p) (local.get $end)) (then (return (local.get $end))))
      (local.set $c (i32.load8_u (local.get $p)))
      (if (i32.eq (local.get $c) (i32.const 34)) (then (return (local.get $p))))
      (local.set $p (i32.add (local.get $p)
        (select (i32.const 2) (i32.const 1) (i32.eq (local.get $c) (i32.const 92)))))
      (br $more))
    (unreachable))

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

  ;; p is just after the '[' of the "numbers" array. Summarises it and writes the result,
  ;; or fails (proc_exit(1)).
  (func $sum_array (param $p i32) (param $end i32)
    (local $count i64) (local $sum i64) (local $min i64) (local $max i64)
    (local $acc i64) (local $s i64) (local $neg i32) (local $d i32) (local $nd i32) (local $c i32)
    (local.set $p (call $skip_ws (local.get $p) (local.get $end)))
    (if (i32.ge_u (local.get $p) (local.get $end))
      (then (call $fail (i32.const 320) (i32.const 42) (i32.const 1))))
    (if (i32.eq (i32.load8_u (local.get $p)) (i32.const 93))       ;; ']' : empty array
      (then
        (call $emit (i64.const 0) (i64.const 0) (i64.const 0) (i64.const 0))
        (return)))
    (loop $element
      (local.set $p (call $skip_ws (local.get $p) (local.get $end)))
      (if (i32.ge_u (local.get $p) (local.get $end))
        (then (call $fail (i32.const 320) (i32.const 42) (i32.const 1))))
      ;; optional minus
      (local.set $neg (i32.eq (i32.load8_u (local.get $p)) (i32.const 45)))
      (local.set $p (i32.add (local.get $p) (local.get $neg)))
      ;; digits, accumulated as a negative number so that i64 min is representable
      (local.set $acc (i64.const 0))
      (local.set $nd (i32.const 0))
      (block $no_more_digits
        (loop $digit
          (br_if $no_more_digits (i32.ge_u (local.get $p) (local.get $end)))
          (local.set $d (i32.sub (i32.load8_u (local.get $p)) (i32.const 48)))
          (br_if $no_more_digits (i32.ge_u (local.get $d) (i32.const 10)))
          (if (i32.or
                (i64.lt_s (local.get $acc) (i64.const -922337203685477580))
                (i32.and (i64.eq (local.get $acc) (i64.const -922337203685477580))
                         (i32.gt_u (local.get $d) (i32.const 8))))
            (then (call $fail (i32.const 240) (i32.const 34) (i32.const 1))))
          (local.set $acc (i64.sub (i64.mul (local.get $acc) (i64.const 10))
                                   (i64.extend_i32_u (local.get $d))))
          (local.set $nd (i32.add (local.get $nd) (i32.const 1)))
          (local.set $p (i32.add (local.get $p) (i32.const 1)))
          (br $digit)))
      (if (i32.eqz (local.get $nd))
        (then
          (if (i32.ge_u (local.get $p) (local.get $end))
            (then (call $fail (i32.const 320) (i32.const 42) (i32.const 1))))
          (call $fail (i32.const 176) (i32.const 55) (i32.const 1))))
      (if (i32.eqz (local.get $neg))
        (then
          (if (i64.eq (local.get $acc) (i64.const -9223372036854775808))
            (then (call $fail (i32.const 240) (i32.const 34) (i32.const 1))))
          (local.set $acc (i64.sub (i64.const 0) (local.get $acc)))))
      ;; the integer must be followed by ',' or ']' (a '.', 'e', 'E' ... means non-integer)
      (local.set $p (call $skip_ws (local.get $p) (local.get $end)))
      (if (i32.ge_u (local.get $p) (local.get $end))
        (then (call $fail (i32.const 320) (i32.const 42) (i32.const 1))))
      (local.set $c (i32.load8_u (local.get $p)))
      (local.set $p (i32.add (local.get $p) (i32.const 1)))
      (if (i32.and (i32.ne (local.get $c) (i32.const 44)) (i32.ne (local.get $c) (i32.const 93)))
        (then (call $fail (i32.const 176) (i32.const 55) (i32.const 1))))
      ;; accumulate
      (if (i64.eqz (local.get $count))
        (then
          (local.set $min (local.get $acc))
          (local.set $max (local.get $acc)))
        (else
          (if (i64.lt_s (local.get $acc) (local.get $min)) (then (local.set $min (local.get $acc))))
          (if (i64.gt_s (local.get $acc) (local.get $max)) (then (local.set $max (local.get $acc))))))
      (local.set $s (i64.add (local.get $sum) (local.get $acc)))
      (if (i64.lt_s (i64.and (i64.xor (local.get $sum) (local.get $s))
                             (i64.xor (local.get $acc) (local.get $s)))
                    (i64.const 0))
        (then (call $fail (i32.const 280) (i32.const 31) (i32.const 1))))
      (local.set $sum (local.get $s))
      (local.set $count (i64.add (local.get $count) (i64.const 1)))
      (br_if $element (i32.eq (local.get $c) (i32.const 44))))    ;; ',' : next element
    ;; ']' : done
    (call $emit (local.get $count) (local.get $sum) (local.get $min) (local.get $max)))

  ;; ---------------------------------------------------------------- entry point

  (func (export "_start")
    (local $p i32) (local $end i32) (local $s i32) (local $e i32) (local $q i32) (local $v i32)
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
        (local.set $s (i32.add (local.get $p) (i32.const 1)))
        (local.set $e (call $string_end (local.get $s) (local.get $end)))
        (br_if $scanned (i32.ge_u (local.get $e) (local.get $end)))   ;; unterminated
        (local.set $p (i32.add (local.get $e) (i32.const 1)))
        (local.set $q (call $skip_ws (local.get $p) (local.get $end)))
        (if (i32.lt_u (local.get $q) (local.get $end))
          (then
            (if (i32.and
                  (i32.eq (i32.load8_u (local.get $q)) (i32.const 58))      ;; ':' => a key
                  (call $eq (local.get $s) (i32.sub (local.get $e) (local.get $s))
                            (i32.const 64) (i32.const 7)))
              (then
                (local.set $v (call $skip_ws (i32.add (local.get $q) (i32.const 1)) (local.get $end)))
                (if (i32.lt_u (local.get $v) (local.get $end))
                  (then
                    (if (i32.eq (i32.load8_u (local.get $v)) (i32.const 91))   ;; '['
                      (then
                        (call $sum_array (i32.add (local.get $v) (i32.const 1)) (local.get $end))
                        (return)))))))))
        (br $scan)))
    (call $fail (i32.const 128) (i32.const 45) (i32.const 1)))
)
