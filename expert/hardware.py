"""What this CPU is fast at: the one place that chooses the number format and thread counts.

Every builder (training autocast) and every engine (vLLM `dtype`, OpenMP threads) asks this
module; nothing else decides between bfloat16 and float32. The rule, from measurements on
machines of this project's kind (2 cores):

- Native bfloat16 (x86 `avx512_bf16` or `amx_bf16`, aarch64 `bf16`, and oneDNN allowed to use
  it): bfloat16 matmuls ran ~3x float32's GFLOP/s, a SmolLM2-135M forward pass 1.6x
  (22.9 vs 14.0 tickets/s), LoRA training steps 1.5x. Choose bfloat16.
- Anything else (AVX2 only, or AVX-512 without BF16): bfloat16 is emulated; a matmul ran at
  1.3-1.7 GFLOP/s against 58-172 for float32 (~100x slower). Choose float32.

An explicit "bfloat16" or "float32" always wins over "auto". Detection reads /proc/cpuinfo and
torch; `probe()` times both formats so a report can show the reason, not only assert it. It
never changes process-wide torch settings.
"""

from __future__ import annotations

import math
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Dtype = Literal["bfloat16", "float32"]
Requested = Literal["auto", "bfloat16", "float32"]
REQUESTED_VALUES: tuple[str, ...] = ("auto", "bfloat16", "float32")

# CPU flags (as /proc/cpuinfo spells them) that make bfloat16 matmuls native.
_NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
_REPORTED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "bf16", "neon")
# oneDNN's ISA cap (documented env vars); below avx512_core_bf16 it emulates bfloat16.
_ONEDNN_CAP_VARS = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
_ONEDNN_BF16_ISAS = ("avx512_core_bf16", "avx512_core_fp16", "avx512_core_amx", "avx10", "all")


@dataclass(frozen=True, slots=True)
class CpuCapability:
    """What the processor (and the libraries' dispatch) offers.

    Attributes:
        model_name: the CPU's model name, as the OS reports it.
        machine: `platform.machine()` (x86_64, aarch64, ...).
        flags: the relevant CPU feature flags present (see `_REPORTED_FLAGS`).
        torch_capability: `torch.backends.cpu.get_cpu_capability()` (AVX2, AVX512, ...), or
            None when torch was not consulted.
        onednn_isa_cap: the oneDNN ISA cap from the environment, lower-cased, or None.
        cores: logical cores usable by this process.
    """

    model_name: str
    machine: str
    flags: frozenset[str]
    torch_capability: str | None
    onednn_isa_cap: str | None
    cores: int

    @property
    def native_bf16(self) -> bool:
        """Whether bfloat16 matmuls run natively here (not emulated)."""
        if not any(flag in self.flags for flag in _NATIVE_BF16_FLAGS):
            return False
        if self.torch_capability is not None and self.torch_capability.upper() in (
            "DEFAULT",
            "AVX2",
        ):
            return False  # torch dispatch capped below AVX-512 (ATEN_CPU_CAPABILITY)
        cap = self.onednn_isa_cap
        return cap is None or any(cap.startswith(isa) for isa in _ONEDNN_BF16_ISAS)

    @property
    def kind(self) -> str:
        """A short name of the processor kind, for labelling every measured figure."""
        simd = self.torch_capability or ("AVX512" if "avx512f" in self.flags else "AVX2")
        bf16 = "native bf16" if self.native_bf16 else "no native bf16"
        return f"{self.machine} {simd}, {bf16}, {self.cores} cores"

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form, recorded beside benchmark figures."""
        return {
            "kind": self.kind,
            "model_name": self.model_name,
            "machine": self.machine,
            "flags": sorted(self.flags),
            "torch_capability": self.torch_capability,
            "onednn_isa_cap": self.onednn_isa_cap,
            "native_bf16": self.native_bf16,
            "cores": self.cores,
        }


@dataclass(frozen=True, slots=True)
class Precision:
    """The number format chosen for one use, and why.

    Attributes:
        dtype: "bfloat16" or "float32".
        requested: what the caller asked for ("auto" or an explicit format).
        reason: one sentence a report can print.
    """

    dtype: Dtype
    requested: str
    reason: str

    @property
    def bf16_autocast(self) -> bool:
        """Whether training runs its matmuls under bfloat16 autocast."""
        return self.dtype == "bfloat16"


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """Measured matmul speed of both formats on this machine (one thread)."""

    float32_gflops: float
    bfloat16_gflops: float
    threads: int = 1
    shape: tuple[int, int, int] = field(default=(256, 576, 1536))

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "float32_gflops": round(self.float32_gflops, 1),
            "bfloat16_gflops": round(self.bfloat16_gflops, 1),
            "threads": self.threads,
            "shape": list(self.shape),
        }


def _read_cpuinfo(path: Path) -> tuple[str, frozenset[str]]:
    try:
        text = path.read_text("utf-8", errors="replace")
    except OSError:
        return platform.processor() or "unknown", frozenset()
    model, flags = "unknown", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model") and model == "unknown":
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return model, frozenset(flags & set(_REPORTED_FLAGS))


def _torch_capability() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return str(torch.backends.cpu.get_cpu_capability())


def detect(
    *,
    cpuinfo: Path = Path("/proc/cpuinfo"),
    environ: dict[str, str] | None = None,
    use_torch: bool = True,
) -> CpuCapability:
    """Read this machine's capability.

    Args:
        cpuinfo: where the CPU flags are read (Linux).
        environ: the environment to read the oneDNN ISA cap from (default: os.environ).
        use_torch: also ask torch which SIMD level it dispatches to (imports torch).
    """
    env = os.environ if environ is None else environ
    model, flags = _read_cpuinfo(cpuinfo)
    cap = next((env[v] for v in _ONEDNN_CAP_VARS if env.get(v)), None)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return CpuCapability(
        model_name=model,
        machine=platform.machine() or "unknown",
        flags=flags,
        torch_capability=_torch_capability() if use_torch else None,
        onednn_isa_cap=cap.lower() if cap else None,
        cores=max(1, cores or 1),
    )


def choose_precision(requested: str, capability: CpuCapability) -> Precision:
    """The number format for training autocast and for the vLLM engine.

    Args:
        requested: "auto" (decide from the capability), "bfloat16" or "float32" (always
            honoured, with a warning in the reason when it is the slow choice here).
        capability: from `detect()` (or injected by tests).

    Raises:
        ValueError: `requested` is not one of "auto", "bfloat16", "float32".
    """
    if requested not in REQUESTED_VALUES:
        raise ValueError(f"precision must be one of {REQUESTED_VALUES}, not {requested!r}")
    native = capability.native_bf16
    if requested == "bfloat16":
        note = "" if native else "; slow here: bfloat16 is emulated on this CPU (~100x)"
        return Precision("bfloat16", requested, f"bfloat16 requested explicitly{note}")
    if requested == "float32":
        note = "; bfloat16 would be ~1.5x faster here" if native else ""
        return Precision("float32", requested, f"float32 requested explicitly{note}")
    if native:
        return Precision(
            "bfloat16",
            requested,
            "auto: native bfloat16 (avx512_bf16/amx_bf16): measured ~1.5x float32 on "
            "model passes, ~3x on matmuls",
        )
    return Precision(
        "float32",
        requested,
        "auto: no native bfloat16 on this CPU: emulated bfloat16 measured ~100x slower "
        "than float32 (matmul 1.3-1.7 vs 58-172 GFLOP/s)",
    )


def busy_cores(*, samples: int = 5, interval_s: float = 0.05) -> float:
    """Cores other work keeps busy now: the runnable tasks /proc/loadavg counts, this one
    excluded, averaged over a few samples (the 1-minute load average, where that file is
    missing, also counts this process's own recent work)."""
    path = Path("/proc/loadavg")
    counts: list[int] = []
    for i in range(samples):
        try:
            running = path.read_text("ascii").split()[3].split("/")[0]
            counts.append(int(running) - 1)
        except (OSError, IndexError, ValueError):
            break
        if i + 1 < samples:
            time.sleep(interval_s)
    if counts:
        return max(0.0, sum(counts) / len(counts))
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def _free_cores(capability: CpuCapability, busy: float | None) -> int:
    """Cores left for a new job, at least one. OpenMP threads that outnumber the free cores
    stall each other at every barrier: measured on 2 cores with other jobs running, a MiniLM
    training step took 15 s with two threads and 0.8 s with one."""
    load = busy_cores() if busy is None else busy
    return max(1, min(capability.cores, math.floor(capability.cores - load + 0.5)))


def engine_threads(capability: CpuCapability, *, streaming: bool, busy: float | None = None) -> int:
    """OpenMP threads for a vLLM engine's model on this CPU.

    Offline batches (eval, bench, a build's scoring) take the cores that are free now. A
    streaming engine shares its cores with the worker's Kafka clients and the broker; on 2
    cores two model threads stalled each other at every OpenMP barrier (50 tickets/s: p50
    3.9 s with two, 15 ms with one), so it takes half the cores, at least one (only 2-core
    machines were measured).
    """
    if not streaming:
        return _free_cores(capability, busy)
    return max(1, capability.cores // 2)


def training_threads(capability: CpuCapability, *, busy: float | None = None) -> int:
    """torch threads for a build: the cores free when it starts (every core when idle)."""
    return _free_cores(capability, busy)


def probe(*, seconds_per_format: float = 0.25) -> ProbeResult:
    """Time one-thread matmuls in both formats (about half a second in all).

    The shape is a SmolLM2 projection over a batch of prompt tokens. The thread count of
    torch is restored afterwards.
    """
    import torch

    m, k, n = 256, 576, 1536
    flops = 2.0 * m * k * n
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        speeds = []
        for dtype in (torch.float32, torch.bfloat16):
            a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
            a @ b
            count, started = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - started) < seconds_per_format or count < 2:
                a @ b
                count += 1
            speeds.append(flops * count / elapsed / 1e9)
    finally:
        torch.set_num_threads(threads)
    return ProbeResult(float32_gflops=speeds[0], bfloat16_gflops=speeds[1], shape=(m, k, n))


def summary(requested: str = "auto", *, measure: bool = False) -> dict[str, object]:
    """Capability, chosen format and (with `measure`) the probe, for reports and CLIs."""
    capability = detect()
    precision = choose_precision(requested, capability)
    doc: dict[str, object] = {
        "cpu": capability.as_dict(),
        "precision": {
            "requested": precision.requested,
            "dtype": precision.dtype,
            "reason": precision.reason,
        },
    }
    if measure:
        doc["probe"] = probe().as_dict()
    return doc


def describe(doc: dict[str, object]) -> str:
    """One line for a terminal: `summary()`'s capability and format."""
    cpu = doc["cpu"]
    precision = doc["precision"]
    assert isinstance(cpu, dict) and isinstance(precision, dict)
    line = f"cpu: {cpu['kind']} ({cpu['model_name']}); format: {precision['dtype']}"
    line += f" ({precision['reason']})"
    probe_doc = doc.get("probe")
    if isinstance(probe_doc, dict):
        line += (
            f"; measured matmul float32 {probe_doc['float32_gflops']} GFLOP/s, "
            f"bfloat16 {probe_doc['bfloat16_gflops']} GFLOP/s (1 thread)"
        )
    return line
