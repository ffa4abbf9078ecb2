"""Session-wide fixtures: the bundled model is loaded once per test session and shared."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile

import pytest

# The Triton kernels run under Triton's interpreter on the CPU. TRITON_INTERPRET must be set before anything imports
# triton (torch and transformers may, in any test): triton decorates its own library (tl.zeros, ...) at import.
if os.environ.get("PAGEDSERVE_TEST_DEVICE", "cpu") == "cpu":
    assert "triton" not in sys.modules, (
        "triton was imported before tests/conftest.py could set TRITON_INTERPRET"
    )
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The test process runs models too (the LLM class, transformers' references): it waits for its OpenMP threads the
# way the engine processes do (pagedserve/envs.py says why). libgomp reads this once, when torch loads it. With the
# other core busy, the W8A8 greedy check took 85-86 s with it against 115-139 s without (2026-12-05).
if "OMP_WAIT_POLICY" not in os.environ and "torch" not in sys.modules:
    from pagedserve.envs import ENGINE_GOMP_SPINCOUNT

    os.environ.setdefault("GOMP_SPINCOUNT", ENGINE_GOMP_SPINCOUNT)

# Hub ids (org/name) are looked up in the local Hugging Face cache (models/hub_cache.py): an empty one for the
# session and the servers it starts, so what a developer's own cache holds cannot change a result. Tests that use a
# cache write their own and pass it (--download-dir) or set HF_HUB_CACHE.
_EMPTY_HUB = tempfile.mkdtemp(prefix="pagedserve-test-hub-")
atexit.register(shutil.rmtree, _EMPTY_HUB, ignore_errors=True)
os.environ["HF_HUB_CACHE"] = os.path.join(_EMPTY_HUB, "hub")


@pytest.fixture(scope="session")
def bundled_llm_fp32():
    """The bundled SmolLM2-135M-Instruct in float32 (exactness tests); one load per session."""
    from pagedserve import LLM

    return LLM(dtype="float32", max_model_len=1024, kv_cache_memory_bytes=256 * 1024**2, seed=0)


@pytest.fixture()
def engine_fp32(bundled_llm_fp32):
    """The shared float32 engine, checked idle and consistent after each test."""
    engine = bundled_llm_fp32.llm_engine
    yield engine
    assert not engine.has_unfinished_requests(), "a test left requests in the engine"
    engine.check_invariants()
    pool = engine.kv_cache_manager.pool
    assert pool.num_free_blocks + pool.num_used_blocks == pool.num_blocks
    assert pool.num_used_blocks == 0


def pytest_collection_modifyitems(config, items):
    """`gpu` tests need a CUDA device: reported as skipped where torch sees none (they run in
    benchmarks/gpu_check.sh on a lent GPU machine)."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    import torch

    skip = pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="needs a CUDA device (benchmarks/gpu_check.sh runs it on a lent GPU)",
    )
    for item in gpu_items:
        item.add_marker(skip)
