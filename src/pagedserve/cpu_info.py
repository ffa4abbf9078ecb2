"""What this CPU can do, read once: the instruction-set features the kernels and the dtype choice depend on.

Pure Python (no torch), so the server, the CLI and the benchmark client can report it. Read from /proc/cpuinfo,
whose flags Linux lists only when both the CPU and the kernel support them (AVX-512 state saving included).
Elsewhere no flag is known and everything takes the portable path.

Kernel ISA levels (ops/build.py compiles one library per level, with explicit -m flags, never -march=native):
  portable     the architecture's baseline (x86-64 SSE2, aarch64 NEON)
  avx2         AVX2 + FMA + F16C (Haswell, Zen 1-3)
  avx512       AVX-512 F/BW/VL/DQ (Skylake-SP, Cascade Lake, Ice Lake)
  avx512_bf16  AVX-512 + AVX512_BF16 + AVX512_VNNI (Cooper Lake, Sapphire Rapids and later, Zen 4 and later)
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from functools import cache

from pagedserve import envs

ISA_LEVELS = envs.ISA_LEVELS

# What each level needs, on top of the level below it.
_LEVEL_NEEDS = {
    "portable": frozenset(),
    "avx2": frozenset({"avx2", "fma", "f16c"}),
    "avx512": frozenset({"avx512f", "avx512bw", "avx512vl", "avx512dq"}),
    "avx512_bf16": frozenset({"avx512_bf16", "avx512_vnni"}),  # every bfloat16 x86 CPU has VNNI too
}
# The features worth naming in a report, in the order people know them.
REPORTED = (
    "avx2", "fma", "avx512f", "avx512bw", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8",
    "asimd", "bf16", "i8mm", "sve",
)  # fmt: skip


@dataclass(frozen=True)
class CpuInfo:
    arch: str
    """platform.machine(): x86_64, aarch64, ..."""

    model: str
    """The CPU's model name as the OS reports it (empty when unknown)."""

    flags: frozenset[str]
    """Feature flags as /proc/cpuinfo spells them (x86 `flags`, Arm `Features`)."""

    @property
    def is_x86(self) -> bool:
        return self.arch in ("x86_64", "AMD64", "i686", "i386")

    def supports(self, level: str) -> bool:
        """True when this CPU runs the kernels compiled for `level`."""
        if level not in ISA_LEVELS:
            raise ValueError(f"ISA level must be one of {', '.join(ISA_LEVELS)}; got {level!r}")
        if level == "portable":
            return True
        if not self.is_x86:
            return False
        needed = set().union(*(_LEVEL_NEEDS[name] for name in ISA_LEVELS[: ISA_LEVELS.index(level) + 1]))
        return needed <= self.flags

    @property
    def best_level(self) -> str:
        """The highest kernel level this CPU runs."""
        return [level for level in ISA_LEVELS if self.supports(level)][-1]

    @property
    def kernel_level(self) -> str:
        """The level the kernels use: the best one, lowered by PAGEDSERVE_CPU_ISA when that is set."""
        cap = envs.cpu_isa_cap()
        best = self.best_level
        if cap is None or ISA_LEVELS.index(cap) >= ISA_LEVELS.index(best):
            return best
        return cap

    @property
    def supported_levels(self) -> list[str]:
        return [level for level in ISA_LEVELS if self.supports(level)]

    @property
    def fast_bf16(self) -> bool:
        """bfloat16 matrix products in hardware (AVX512_BF16 or AMX on x86, BF16 on Arm). Without them PyTorch's
        bf16 matmul converts in software: ~15 GFLOP/s against ~106 for float32 on a Zen 3 core pair."""
        if self.is_x86:
            # With PAGEDSERVE_CPU_ISA below avx512_bf16 the host is treated as one without bf16 instructions.
            return self.kernel_level == "avx512_bf16" or self.has_amx
        return "bf16" in self.flags

    @property
    def has_amx(self) -> bool:
        """AMX bfloat16 tiles (Intel Sapphire Rapids and later), unless PAGEDSERVE_CPU_ISA caps the level."""
        return self.is_x86 and envs.cpu_isa_cap() is None and "amx_bf16" in self.flags

    @property
    def features(self) -> list[str]:
        return [name for name in REPORTED if name in self.flags]

    def describe(self) -> str:
        """One line for logs, --version and benchmark headers."""
        model = self.model or "unknown CPU"
        features = " ".join(self.features) or "no SIMD extensions reported"
        return (
            f"{model} ({self.arch}): {features}; kernels: {self.kernel_level}; "
            f"bf16 compute: {'hardware' if self.fast_bf16 else 'emulated (slow)'}"
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "arch": self.arch,
            "model": self.model,
            "features": self.features,
            "kernel_isa": self.kernel_level,
            "bf16_hardware": self.fast_bf16,
        }


def parse_cpuinfo(text: str, arch: str) -> CpuInfo:
    """A CpuInfo from the text of /proc/cpuinfo (the first processor's entry is enough: cores are alike)."""
    model, flags = "", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = " ".join(value.split())
        elif key in ("flags", "Features") and not flags:
            flags = frozenset(value.split())
    return CpuInfo(arch=arch, model=model, flags=flags)


@cache
def cpu_info() -> CpuInfo:
    """This host's CPU (read once per process)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            text = cpuinfo.read()
    except OSError:
        text = ""
    return parse_cpuinfo(text, platform.machine())
