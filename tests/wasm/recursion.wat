;; recursion.wat -- hostile: _start calls a function that recurses forever (no base case, not a tail call); must trap with stack overflow.
(module
  (memory (export "memory") 1)
  (func $recurse (param $n i32) (result i32)
    ;; the addition after the call keeps it a real (non-tail) call
    (i32.add (call $recurse (i32.add (local.get $n) (i32.const 1))) (i32.const 1)))
  (func (export "_start")
    (drop (call $recurse (i32.const 0)))))
