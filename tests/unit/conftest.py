"""Fixtures for the kernel tests: each test runs once per ISA level this machine supports (the portable path and
every SIMD level up to the machine's own), so every host the suite runs on tests its own fast path and the
portable one against PyTorch."""

from __future__ import annotations

import pytest

from pagedserve.cpu_info import cpu_info

ISA_LEVELS_HERE = cpu_info().supported_levels


@pytest.fixture(params=ISA_LEVELS_HERE)
def isa_level(request):
    """Makes the kernels of one ISA level the ones every kernel call uses, for the duration of a test."""
    from pagedserve.ops import build

    library = build.use_level(request.param)
    assert library is not None, (
        f"the {request.param} kernels must build on this machine (a C compiler is needed)"
    )
    yield request.param
    build.use_level(None)
