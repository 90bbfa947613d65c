;; memory_fill.wat -- hostile: grows its memory one page at a time until memory.grow returns -1, writing every byte of each page, then executes unreachable (its whole cap becomes resident).
(module
  (memory (export "memory") 1)
  (func (export "_start")
    (local $old i32)
    (memory.fill (i32.const 0) (i32.const 0xab) (i32.const 65536))
    (loop $grow
      (local.set $old (memory.grow (i32.const 1)))
      (if (i32.ne (local.get $old) (i32.const -1))
        (then
          (memory.fill (i32.shl (local.get $old) (i32.const 16)) (i32.const 0xab) (i32.const 65536))
          (br $grow))))
    (unreachable)))
