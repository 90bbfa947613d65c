;; poll_spin.wat -- hostile: calls poll_oneoff with a zero timeout in an endless loop, so a host function runs most of the time.
(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    ;; the subscription at 0: userdata 0, tag 0 (clock), clock id 1 (monotonic), timeout 0, flags 0
    (i32.store (i32.const 16) (i32.const 1))
    (loop $forever
      (drop (call $poll (i32.const 0) (i32.const 128) (i32.const 1) (i32.const 192)))
      (br $forever))))
