"""The engine <-> rank 0 messages: plain data that survives msgspec both ways, and nothing else decodes."""

from __future__ import annotations

import msgspec
import pytest

from pagedserve.core.scheduler_output import NewSequence, ScheduledSequence, SchedulerOutput
from pagedserve.sampling_params import SamplingParams
from pagedserve.worker import tp_messages as msg
from pagedserve.worker.runner_output import ModelRunnerOutput


def test_a_step_round_trips_with_its_sampling_parameters() -> None:
    params = SamplingParams(
        temperature=0.7, top_k=5, seed=3, stop=["end"], stop_token_ids=[7], logprobs=2, n=2
    )
    params.all_stop_token_ids = {7, 2}  # EOS added by the engine: min_tokens masks it on the worker
    step = SchedulerOutput(
        sequences=[
            ScheduledSequence("r#0", 0, [1, 2, 3], [4, 5], True),
            ScheduledSequence("q", 9, [8, 4, 6], [1], True, 2),
        ],
        new_sequences=[NewSequence("r#0", [1, 2, 3], params, 0)],
        finished_seq_ids=["old"],
        num_prefill_tokens=3,
        num_decode_tokens=1,
    )
    decoded = msg.decode_for_worker(msg.encode(msg.Step(step)))
    assert isinstance(decoded, msg.Step) and decoded.scheduler_output == step
    assert decoded.scheduler_output.new_sequences[0].sampling_params.all_stop_token_ids == {7, 2}


def test_a_result_round_trips() -> None:
    output = ModelRunnerOutput(
        {"a": [5, 7]}, {"a": [([5, 9], [-0.1, -2.5], 1), ([7], [-0.2], 1)]}, {"a": [([3], [-1.0], 1)]}
    )
    decoded = msg.decode_for_engine(msg.encode(msg.Result(output)))
    assert decoded == msg.Result(output)


def test_anything_else_is_refused() -> None:
    with pytest.raises(msgspec.DecodeError):
        msg.decode_for_worker(b"\x80\x04K\x01.")  # a pickle
    with pytest.raises(msgspec.ValidationError):
        msg.decode_for_worker(msg.encode(msg.Ready(None)))  # type: ignore[arg-type]
