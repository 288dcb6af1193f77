"""The number-format and thread choice for each kind of processor (capabilities injected)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from expert import hardware
from expert.hardware import CpuCapability, choose_precision, engine_threads
from expert.serving import EngineConfig, engine_placement

X86_BF16_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14
flags\t\t: fpu sse2 avx avx2 avx512f avx512bw avx512_bf16 avx512_vnni
processor\t: 1
model name\t: AMD EPYC 9R14
flags\t\t: fpu sse2 avx avx2 avx512f avx512bw avx512_bf16 avx512_vnni
"""
X86_AVX2_CPUINFO = """processor\t: 0
model name\t: Intel(R) Xeon(R) CPU E5-2686 v4 @ 2.30GHz
flags\t\t: fpu sse2 avx avx2 fma
"""
ARM_BF16_CPUINFO = """processor\t: 0
BogoMIPS\t: 2100.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 bf16 i8mm
"""


def cpu(
    flags: set[str],
    *,
    torch_capability: str | None = "AVX512",
    onednn_isa_cap: str | None = None,
    cores: int = 2,
) -> CpuCapability:
    return CpuCapability(
        model_name="test cpu",
        machine="x86_64",
        flags=frozenset(flags),
        torch_capability=torch_capability,
        onednn_isa_cap=onednn_isa_cap,
        cores=cores,
    )


NATIVE = cpu({"avx2", "avx512f", "avx512_bf16"})
AMX = cpu({"avx2", "avx512f", "amx_tile", "amx_bf16"})
AVX2_ONLY = cpu({"avx2"}, torch_capability="AVX2")
AVX512_NO_BF16 = cpu({"avx2", "avx512f"})


@pytest.mark.parametrize("capability", [NATIVE, AMX], ids=["avx512_bf16", "amx_bf16"])
def test_auto_picks_bfloat16_where_it_is_native(capability: CpuCapability) -> None:
    precision = choose_precision("auto", capability)
    assert precision.dtype == "bfloat16"
    assert precision.bf16_autocast
    assert "native" in precision.reason


@pytest.mark.parametrize(
    "capability",
    [
        AVX2_ONLY,
        AVX512_NO_BF16,
        # torch's dispatch capped below AVX-512 (ATEN_CPU_CAPABILITY=avx2)
        cpu({"avx2", "avx512f", "avx512_bf16"}, torch_capability="AVX2"),
        # oneDNN capped below its bfloat16 ISA (ONEDNN_MAX_CPU_ISA=AVX2)
        cpu({"avx2", "avx512f", "avx512_bf16"}, onednn_isa_cap="avx2"),
    ],
    ids=["avx2", "avx512-without-bf16", "torch-capped", "onednn-capped"],
)
def test_auto_picks_float32_where_bfloat16_is_emulated(capability: CpuCapability) -> None:
    precision = choose_precision("auto", capability)
    assert precision.dtype == "float32"
    assert not precision.bf16_autocast
    assert "emulated" in precision.reason


def test_onednn_cap_at_a_bf16_isa_keeps_bfloat16() -> None:
    capability = cpu({"avx512f", "avx512_bf16"}, onednn_isa_cap="avx512_core_bf16")
    assert choose_precision("auto", capability).dtype == "bfloat16"


@pytest.mark.parametrize("capability", [NATIVE, AVX2_ONLY], ids=["native", "avx2"])
@pytest.mark.parametrize("requested", ["bfloat16", "float32"])
def test_an_explicit_format_always_wins(capability: CpuCapability, requested: str) -> None:
    precision = choose_precision(requested, capability)
    assert precision.dtype == requested
    assert precision.requested == requested


def test_an_explicit_slow_choice_says_so() -> None:
    assert "slow here" in choose_precision("bfloat16", AVX2_ONLY).reason
    assert "faster" in choose_precision("float32", NATIVE).reason


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="precision must be one of"):
        choose_precision("int8", NATIVE)


@pytest.mark.parametrize(
    ("text", "native", "model"),
    [
        (X86_BF16_CPUINFO, True, "AMD EPYC 9R14"),
        (X86_AVX2_CPUINFO, False, "Intel(R) Xeon(R) CPU E5-2686 v4 @ 2.30GHz"),
        (ARM_BF16_CPUINFO, True, "unknown"),
    ],
    ids=["x86-bf16", "x86-avx2", "arm-bf16"],
)
def test_detect_reads_the_flags_from_cpuinfo(
    tmp_path: Path, text: str, native: bool, model: str
) -> None:
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    capability = hardware.detect(cpuinfo=path, environ={}, use_torch=False)
    assert capability.native_bf16 is native
    assert capability.model_name == model
    assert capability.cores >= 1
    assert capability.kind.endswith(f"{capability.cores} cores")


def test_detect_reads_the_onednn_cap_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "cpuinfo"
    path.write_text(X86_BF16_CPUINFO)
    capped = hardware.detect(cpuinfo=path, environ={"ONEDNN_MAX_CPU_ISA": "AVX2"}, use_torch=False)
    assert capped.onednn_isa_cap == "avx2"
    assert not capped.native_bf16


def test_a_missing_cpuinfo_means_no_native_bf16(tmp_path: Path) -> None:
    capability = hardware.detect(cpuinfo=tmp_path / "absent", environ={}, use_torch=False)
    assert not capability.native_bf16
    assert choose_precision("auto", capability).dtype == "float32"


@pytest.mark.parametrize(
    ("cores", "streaming", "expected"),
    [(2, True, 1), (1, True, 1), (16, True, 8), (2, False, 2), (16, False, 16)],
)
def test_engine_threads_leave_room_for_kafka_when_streaming(
    cores: int, streaming: bool, expected: int
) -> None:
    assert engine_threads(cpu({"avx2"}, cores=cores), streaming=streaming, busy=0.0) == expected


@pytest.mark.parametrize(
    ("cores", "busy", "expected"),
    [(2, 0.1, 2), (2, 1.0, 1), (2, 2.6, 1), (2, 9.0, 1), (16, 3.2, 13), (16, 0.0, 16)],
)
def test_builds_and_offline_engines_take_only_the_free_cores(
    cores: int, busy: float, expected: int
) -> None:
    capability = cpu({"avx2"}, cores=cores)
    assert hardware.training_threads(capability, busy=busy) == expected
    assert engine_threads(capability, streaming=False, busy=busy) == expected


def test_engine_placement_honours_an_explicit_dtype_and_thread_count() -> None:
    placement = engine_placement(
        EngineConfig(model_dir=Path("x"), dtype="float32", cpu_threads=3), streaming=True
    )
    assert placement.dtype == "float32"
    assert placement.threads == 3
    assert placement.as_dict()["cpu"]["kind"]  # type: ignore[index]


def test_engine_placement_auto_follows_this_machine() -> None:
    placement = engine_placement(EngineConfig(model_dir=Path("x")), streaming=True)
    expected = choose_precision("auto", hardware.detect()).dtype
    assert placement.dtype == expected


def test_probe_measures_both_formats() -> None:
    result = hardware.probe(seconds_per_format=0.02)
    assert result.float32_gflops > 0
    assert result.bfloat16_gflops > 0


@pytest.mark.parametrize(
    ("in_process", "model_in_engine_core", "expected"),
    [(True, False, "0"), (False, True, "0"), (False, False, "1")],
)
def test_each_engine_sets_which_process_runs_its_model(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    in_process: bool,
    model_in_engine_core: bool,
    expected: str,
) -> None:
    """Set, never inherited: an offline engine started earlier (which sets "0") must not
    move a later streaming engine's model into the engine core."""
    from expert.engine import _set_env_defaults

    # Undone after the test: the rest of the session keeps its own engine settings.
    for name in (
        "VLLM_CPU_KVCACHE_SPACE",
        "VLLM_CPU_OMP_THREADS_BIND",
        "VLLM_CACHE_ROOT",
        "TORCHINDUCTOR_CACHE_DIR",
        "VLLM_RPC_BASE_PATH",
        "VLLM_NO_USAGE_STATS",
        "OMP_NUM_THREADS",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1" if expected == "0" else "0")
    config = EngineConfig(
        model_dir=Path("x"), cache_dir=tmp_path, model_in_engine_core=model_in_engine_core
    )
    placement = engine_placement(config, streaming=not in_process)
    _set_env_defaults(config, placement, in_process=in_process)
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == expected
