"""Front end <-> engine-core messages: plain data that survives msgspec both ways, and nothing else decodes."""

from __future__ import annotations

import msgspec
import pytest

from pagedserve.config import EngineConfig, ParallelConfig
from pagedserve.core.stats import IterationStats, SchedulerStats
from pagedserve.engine import core_messages as msg
from pagedserve.model_config import ModelConfig
from pagedserve.outputs import EngineInfo
from pagedserve.sampling_params import SamplingParams


def test_a_request_round_trips_with_its_parameters() -> None:
    params = SamplingParams(n=2, temperature=0.5, stop=["x"], stop_token_ids=[9], logprobs=3, seed=4)
    params.all_stop_token_ids = {9, 2}
    request = msg.EngineCoreRequest("r", [1, 2, 3], params, 1.5, 40, [2])
    decoded = msg.decode_to_core(msg.encode(request))
    assert decoded == request and decoded.sampling_params.all_stop_token_ids == {9, 2}


def test_the_start_message_carries_the_whole_config() -> None:
    config = EngineConfig(
        model=ModelConfig(model="/m", dtype="float32", max_model_len=77, quantization="gguf"),
        parallel=ParallelConfig(tensor_parallel_size=2),
    )
    decoded = msg.decode_to_core(msg.encode(msg.StartCore(config)))
    assert isinstance(decoded, msg.StartCore) and decoded.config == config


def test_outputs_round_trip_with_logprobs_and_stats() -> None:
    out = msg.SequenceOutput(
        "r#1", "r", 1, [17, 9], "length", None, [([17, 4], [-0.25, -1.5], 1), ([9], [-0.5], 2)], [([3], [-2.0], 1)],
        16, 1, 1.0, 1.1, 1.2, 1.3,
    )  # fmt: skip
    iteration = IterationStats(
        timestamp=2.0, num_generation_tokens=2, time_to_first_tokens=[0.1], num_drafts=1, num_draft_tokens=3,
        num_accepted_tokens=1, num_accepted_tokens_per_pos=[1, 0, 0],
    )  # fmt: skip
    outputs = msg.CoreOutputs([out], SchedulerStats(num_running_reqs=1, kv_cache_usage=0.5), iteration)
    decoded = msg.decode_from_core(msg.encode(outputs))
    assert decoded == outputs


def test_ready_and_failure_round_trip() -> None:
    info = EngineInfo("m", 512, 100, 16, 10, 1024, True, "float32", "cpu", eos_token_ids=[2])
    assert msg.decode_from_core(msg.encode(msg.CoreReady(info, [11, 12]))) == msg.CoreReady(info, [11, 12])
    failed = msg.CoreFailed("ValueError", "bad", "Traceback ...")
    assert msg.decode_from_core(msg.encode(failed)) == failed


def test_each_side_refuses_the_others_messages_and_anything_else() -> None:
    with pytest.raises(msgspec.ValidationError):
        msg.decode_to_core(msg.encode(msg.Heartbeat()))
    with pytest.raises(msgspec.ValidationError):
        msg.decode_from_core(msg.encode(msg.Abort(["r"])))
    with pytest.raises(msgspec.DecodeError):
        msg.decode_to_core(b"\x80\x03cos\nsystem\n")  # a pickle is not msgpack
