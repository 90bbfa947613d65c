;; memory_bomb.wat -- hostile: grows memory one page at a time (touching each new page) until memory.grow returns -1, then executes unreachable.
(module
  (memory (export "memory") 1)
  (func (export "_start")
    (local $old i32)
    (loop $grow
      (local.set $old (memory.grow (i32.const 1)))
      (if (i32.ne (local.get $old) (i32.const -1))
        (then
          ;; write one byte into the new page (old size in pages * 64 KiB = start of new page)
          (i32.store8 (i32.shl (local.get $old) (i32.const 16)) (i32.const 1))
          (br $grow))))
    (unreachable)))
