"""The WASM sandbox: untrusted agent modules validated, stored and run under hard limits (wasmtime).

`compiler` compiles and checks a module in a child process under CPU and memory limits; `runner` runs a
compiled module in a fresh store with fuel, a deadline, a memory cap and bounded stdio, and gives everything
back when the run ends; `epoch` turns wall-clock deadlines into epoch interruptions; `wasi` replaces the WASI
calls that could outlast a run (stdio, sleeping, randomness); `native` makes a run's wasmtime C API calls
directly; `guest` is one run as those see it; `store` keeps modules by SHA-256; `service` is the hub's side
(versions per agent in PostgreSQL, the operator's trial runs).
"""
