"""ops/recording.py: kernel calls recorded while a forward runs, and replayed on new contents of the same buffers."""

from __future__ import annotations

import pytest
import torch

from pagedserve.ops import build
from pagedserve.ops import cpu as cpu_ops
from pagedserve.ops.recording import REPLAY_KERNELS, KernelRecording, ReplayProgram, current


def test_replay_recomputes_from_the_buffers_current_contents(isa_level) -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 64)
    weight = torch.rand(64) + 0.5
    recording = KernelRecording()
    with recording.active():
        assert current() is recording
        out = cpu_ops.rms_norm(x, weight, 1e-5)
        assert build.load().compiled_level() >= 0  # a query: not recorded
    assert current() is None
    assert [function.__name__ for function, _ in recording.calls] == ["rms_norm"]
    torch.testing.assert_close(out, torch.nn.functional.rms_norm(x, (64,), weight, 1e-5))

    x.copy_(torch.randn(3, 64))  # same buffer, new values
    recording.program().run()
    torch.testing.assert_close(out, torch.nn.functional.rms_norm(x, (64,), weight, 1e-5))


def test_outside_a_recording_calls_are_not_kept() -> None:
    recording = KernelRecording()
    with recording.active():
        pass
    cpu_ops.silu_and_mul(torch.randn(2, 8))
    assert recording.calls == []


def test_a_kernel_failing_on_replay_names_itself() -> None:
    """A slot written at capture, then moved outside the cache: the replay stops with the kernel's name."""
    k_cache = torch.zeros(2, 1, 4, 16)  # [blocks, kv heads, head dim, block size]
    v_cache = torch.zeros(2, 1, 16, 4)
    key, value = torch.randn(1, 1, 4), torch.randn(1, 1, 4)
    slots = torch.tensor([5])
    recording = KernelRecording()
    with recording.active():
        cpu_ops.write_kv_cache(key, value, k_cache, v_cache, slots)
    slots[0] = 2 * 16  # one past the last slot
    with pytest.raises(RuntimeError, match="write_kv_cache"):
        recording.program().run()


def test_every_kernel_is_replayable() -> None:
    """Each function build.SIGNATURES declares is a query, one csrc/replay.c runs (the tensor-parallel
    collectives included), one the sampler calls after the (replayed) forward pass, or the tensor-parallel step
    broadcast, which comes before a step: never while recording."""
    queries = {
        "gguf_has_panels",
        "gguf_has_bf16_panels",
        "gguf_gemv_max_rows",
        "compiled_level",
        "replay_calls",
    }
    outside_steps = {"apply_token_bitmask_f32", "shm_broadcast_send", "shm_broadcast_recv"}
    assert set(build.SIGNATURES) - queries - outside_steps == set(REPLAY_KERNELS)


def test_an_empty_program_runs() -> None:
    ReplayProgram(build.load(), []).run()
