"""The Triton kernels run on PAGEDSERVE_TEST_DEVICE (default cpu, under Triton's interpreter, which tests/conftest.py
turns on before anything imports triton; cuda on a GPU machine: benchmarks/gpu_check.sh)."""

from __future__ import annotations

import os

import pytest
import torch

TEST_DEVICE = os.environ.get("PAGEDSERVE_TEST_DEVICE", "cpu")


@pytest.fixture()
def test_device() -> torch.device:
    if TEST_DEVICE == "cuda" and not torch.cuda.is_available():
        pytest.fail("PAGEDSERVE_TEST_DEVICE=cuda but torch sees no CUDA device")
    return torch.device(TEST_DEVICE)
