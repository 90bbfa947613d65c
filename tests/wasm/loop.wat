;; loop.wat -- hostile: _start spins forever without any host calls (must be stopped by fuel/epoch).
(module
  (memory (export "memory") 1)
  (func (export "_start")
    (loop $forever
      (br $forever))))
