"""The WASM sandbox: untrusted agent modules validated, stored and run under hard limits (wasmtime).

`compiler` compiles and checks a module in a child process under CPU and memory limits; `runner` runs a
compiled module in a fresh store with fuel, an epoch deadline, a memory cap and bounded stdio; `store` keeps
modules by SHA-256; `service` is the hub's side (versions per agent in PostgreSQL, the operator's trial runs).
"""
