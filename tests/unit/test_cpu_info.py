"""CPU capability detection: the kernel ISA level and the dtype choice, from real /proc/cpuinfo flag lists."""

from __future__ import annotations

import pytest
import torch

from pagedserve import cpu_info as cpu_info_module
from pagedserve.cpu_info import CpuInfo, cpu_info, parse_cpuinfo
from pagedserve.worker.dtypes import resolve_dtype

X86_BASE = "fpu sse sse2 ssse3 sse4_1 sse4_2 popcnt"
ZEN3 = f"{X86_BASE} avx f16c fma avx2 bmi1 bmi2"  # the flags that matter of an AMD EPYC 7003 (Milan)
ICELAKE = f"{ZEN3} avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni avx512vbmi"
ZEN4 = f"{ICELAKE} avx512_bf16 avx_vnni"
SAPPHIRE_RAPIDS = f"{ZEN4} amx_bf16 amx_tile amx_int8"


def cpu(flags: str, arch: str = "x86_64") -> CpuInfo:
    key = "flags" if arch == "x86_64" else "Features"
    return parse_cpuinfo(
        f"processor\t: 0\nmodel name\t: Test  CPU\n{key}\t\t: {flags}\n\nprocessor\t: 1\n", arch
    )


@pytest.mark.parametrize(
    "flags,level,fast_bf16,amx",
    [
        (X86_BASE, "portable", False, False),
        (ZEN3, "avx2", False, False),
        (ICELAKE, "avx512", False, False),
        (ZEN4, "avx512_bf16", True, False),
        (SAPPHIRE_RAPIDS, "avx512_bf16", True, True),
    ],
)
def test_levels_and_bf16_from_x86_flags(flags, level, fast_bf16, amx, monkeypatch):
    monkeypatch.delenv("PAGEDSERVE_CPU_ISA", raising=False)
    info = cpu(flags)
    assert info.model == "Test CPU"
    assert info.best_level == info.kernel_level == level
    assert info.supported_levels[0] == "portable" and info.supported_levels[-1] == level
    assert info.fast_bf16 is fast_bf16
    assert info.has_amx is amx
    assert level in info.describe()


def test_arm_takes_the_portable_kernels_and_reports_its_features(monkeypatch):
    monkeypatch.delenv("PAGEDSERVE_CPU_ISA", raising=False)
    info = cpu("fp asimd evtstrm aes crc32 bf16 i8mm sve", arch="aarch64")
    assert info.kernel_level == "portable" and not info.supports("avx2")
    assert info.fast_bf16 and {"asimd", "bf16", "sve"} <= set(info.features)


def test_the_isa_variable_lowers_the_level_but_never_raises_it(monkeypatch):
    monkeypatch.setenv("PAGEDSERVE_CPU_ISA", "avx2")
    assert cpu(ZEN4).kernel_level == "avx2"
    assert not cpu(SAPPHIRE_RAPIDS).fast_bf16  # treated as a CPU without bf16 instructions
    assert not cpu(SAPPHIRE_RAPIDS).has_amx
    assert cpu(X86_BASE).kernel_level == "portable"
    monkeypatch.setenv("PAGEDSERVE_CPU_ISA", "avx512_bf16")
    assert cpu(ZEN3).kernel_level == "avx2"
    monkeypatch.setenv("PAGEDSERVE_CPU_ISA", "sse9")
    with pytest.raises(ValueError, match="PAGEDSERVE_CPU_ISA"):
        cpu(ZEN3).kernel_level  # noqa: B018


def test_this_machine_is_read():
    info = cpu_info()
    assert info.arch and info.supported_levels[0] == "portable"
    if info.is_x86:
        assert "sse2" in info.flags or not info.flags  # /proc/cpuinfo lists sse2 on every x86-64 Linux host


class _Config:
    torch_dtype = "bfloat16"


BF16, F32 = torch.bfloat16, torch.float32


@pytest.mark.parametrize(
    "flags,expected", [(ZEN3, (F32, BF16)), (ICELAKE, (F32, BF16)), (ZEN4, (BF16, BF16))]
)
def test_auto_dtype_follows_the_hardware(flags, expected, monkeypatch):
    """Without bfloat16 instructions: float32 compute, weights kept in bfloat16 (the C kernels widen them)."""
    monkeypatch.delenv("PAGEDSERVE_CPU_ISA", raising=False)
    monkeypatch.setattr("pagedserve.worker.dtypes.cpu_info", lambda: cpu(flags))
    cpu_device = torch.device("cpu")
    assert tuple(resolve_dtype("auto", _Config(), quantized_source=True, device=cpu_device)) == expected
    # an explicit dtype is obeyed whatever the hardware, for weights and compute alike
    assert tuple(resolve_dtype("bfloat16", _Config(), quantized_source=True, device=cpu_device)) == (
        BF16,
        BF16,
    )
    assert tuple(resolve_dtype("float32", _Config(), quantized_source=False, device=cpu_device)) == (F32, F32)


def test_auto_dtype_without_the_kernels_is_plain_float32(monkeypatch):
    monkeypatch.setattr("pagedserve.worker.dtypes.cpu_info", lambda: cpu(ZEN3))
    monkeypatch.setattr("pagedserve.worker.dtypes.cpu_kernels.load", lambda: None)
    dtypes = resolve_dtype("auto", _Config(), quantized_source=True, device=torch.device("cpu"))
    assert tuple(dtypes) == (F32, F32)


def test_module_reads_no_torch():
    source = open(cpu_info_module.__file__, encoding="utf-8").read()
    assert "import torch" not in source  # the server and the benchmark client report it without torch
