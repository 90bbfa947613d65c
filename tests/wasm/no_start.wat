;; no_start.wat -- ABI-less: exports memory and a function "run" but no _start.
(module
  (memory (export "memory") 1)
  (func (export "run") (result i32)
    (i32.const 42)))
