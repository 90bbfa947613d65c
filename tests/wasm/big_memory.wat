;; big_memory.wat -- hostile: declares an initial memory of 2048 pages (128 MiB); _start does nothing.
(module
  (memory (export "memory") 2048)
  (func (export "_start")))
