"""The sandbox's vocabulary: limits, outcomes and results of a run, and what validation learns of a module."""

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

MIB = 1 << 20


class Outcome(StrEnum):
    OK = "ok"
    TRAPPED = "trapped"  # a wasm trap (unreachable, out-of-bounds access, stack overflow, ...): see `error`
    OUT_OF_FUEL = "out_of_fuel"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    MEMORY_LIMIT = "memory_limit"
    OUTPUT_TOO_LARGE = "output_too_large"
    INVALID_OUTPUT = "invalid_output"  # stdout is not one JSON object
    EXITED = "exited"  # proc_exit with a non-zero code: the module reports its own failure (see `log`)


class RunLimits(BaseModel):
    """Hard limits of one run. The bounds on each field are the most any run may ask for."""

    model_config = ConfigDict(extra="forbid")

    fuel: int = Field(default=2_000_000_000, ge=1, le=1_000_000_000_000,
                      description="Instruction budget (wasmtime fuel, roughly one unit per instruction).")
    deadline_seconds: float = Field(default=10.0, gt=0, le=300, description="Wall-clock limit of the run.")
    memory_bytes: int = Field(default=64 * MIB, ge=64 * 1024, le=4096 * MIB,
                              description="Cap on the module's linear memory.")
    output_bytes: int = Field(default=1 * MIB, ge=16, le=64 * MIB, description="Most stdout may hold.")
    log_bytes: int = Field(default=64 * 1024, ge=0, le=4 * MIB,
                           description="Most of stderr kept as the log (the rest is dropped).")


class RunResult(BaseModel):
    outcome: Outcome
    output: dict[str, Any] | None = Field(description="The JSON object the module wrote on stdout, when ok.")
    error: str | None = Field(description="What went wrong, for every outcome but ok.")
    exit_code: int | None = Field(description="The code passed to proc_exit, or 0 when `_start` returned.")
    log: str = Field(description="stderr, decoded as UTF-8 (invalid bytes replaced), at most `log_bytes`.")
    fuel_used: int | None = Field(description="Fuel consumed; null when the deadline stopped the run (wasmtime "
                                               "does not account it then).")
    memory_bytes: int = Field(description="The module's linear memory size when the run ended.")
    duration_ms: float

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK


class CompileLimits(BaseModel):
    """What compiling one module may cost (from the hub's sandbox settings; agent processes get them too)."""

    model_config = ConfigDict(frozen=True)

    max_module_bytes: int
    cpu_seconds: int
    memory_bytes: int  # the compiler process's address space
    memory_cap_bytes: int  # most memory a module may start with (the run-time cap)


class ModuleInfo(BaseModel):
    """What validation found: the module's identity and its interface."""

    sha256: str
    size_bytes: int
    imports: list[str] = Field(description="`module.name` of each import (all WASI preview 1).")
    memory_min_bytes: int
    compile_ms: float
