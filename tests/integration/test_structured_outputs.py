"""Structured outputs in the engine with the bundled model: constrained sequences follow their grammar with n > 1,
prefix-cache hits and tensor parallelism, and no grammar state outlives its sequence (check_invariants)."""

from __future__ import annotations

import json

import jsonschema
import pytest

from pagedserve import SamplingParams
from pagedserve.sampling_params import StructuredOutputsParams

pytestmark = [pytest.mark.model]

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 16},
        "population": {"type": "integer", "minimum": 1000},
        "rivers": {"type": "array", "items": {"enum": ["north", "south"]}, "minItems": 1, "maxItems": 2},
    },
    "required": ["city", "population", "rivers"],
    "additionalProperties": False,
}
PROMPT = "Describe a city as a JSON object:"


def _run(engine, request_id: str, prompt: str, params: SamplingParams) -> list:
    engine.add_request(request_id, prompt, params)
    finished = []
    while engine.has_unfinished_requests():
        finished += [o for o in engine.step() if o.finished]
    return finished


def test_json_schema_with_n_samples_and_prefix_hits(engine_fp32) -> None:
    params = SamplingParams(
        n=3, temperature=1.0, seed=3, max_tokens=120, structured_outputs=StructuredOutputsParams(json=SCHEMA)
    )
    for attempt in range(2):  # the second run hits the prefix cache and the grammar caches
        (output,) = _run(engine_fp32, f"so-{attempt}", PROMPT, params)
        assert len(output.outputs) == 3
        for completion in output.outputs:
            assert completion.finish_reason == "stop", completion.text
            jsonschema.validate(json.loads(completion.text), SCHEMA)


def test_grammar_completion_finishes_the_sequence_even_with_ignore_eos(engine_fp32) -> None:
    params = SamplingParams(
        temperature=0.0,
        max_tokens=50,
        ignore_eos=True,
        structured_outputs=StructuredOutputsParams(choice=["yes", "no"]),
    )
    (output,) = _run(engine_fp32, "choice", "Is water wet?", params)
    assert output.outputs[0].text in ("yes", "no") and output.outputs[0].finish_reason == "stop"


def test_aborts_free_grammar_state_while_compiling_and_while_running(engine_fp32) -> None:
    constrained = SamplingParams(
        max_tokens=200, ignore_eos=True, structured_outputs=StructuredOutputsParams(regex="[a-z]{400,500}")
    )
    engine_fp32.add_request("waiting", PROMPT, constrained)  # aborted before its matcher is built
    engine_fp32.abort_request(["waiting"])
    engine_fp32.check_invariants()
    engine_fp32.add_request("running", PROMPT, constrained)
    for _ in range(200):
        engine_fp32.step()
        if engine_fp32.core.structured.live_seq_ids:
            break
    assert engine_fp32.core.structured.live_seq_ids == {"running"}
    engine_fp32.step()
    engine_fp32.abort_request(["running"])
    engine_fp32.check_invariants()
    assert not engine_fp32.core.structured.live_seq_ids and engine_fp32.core.structured.num_pending == 0


def test_unconstrained_rows_beside_constrained_ones_are_unchanged(engine_fp32) -> None:
    plain = SamplingParams(temperature=0.0, max_tokens=12)
    (alone,) = _run(engine_fp32, "alone", "The capital of France is", plain)
    engine_fp32.add_request("plain", "The capital of France is", plain)
    engine_fp32.add_request("json", PROMPT, SamplingParams(temperature=0.0, max_tokens=60,
                            structured_outputs=StructuredOutputsParams(json=SCHEMA)))  # fmt: skip
    outputs = {}
    while engine_fp32.has_unfinished_requests():
        outputs.update({o.request_id: o for o in engine_fp32.step() if o.finished})
    assert outputs["plain"].outputs[0].token_ids == alone.outputs[0].token_ids
    jsonschema.validate(json.loads(outputs["json"].outputs[0].text), SCHEMA)


@pytest.mark.slow
def test_tensor_parallel_follows_the_same_grammar(engine_fp32, tp2_engine) -> None:
    params = SamplingParams(
        temperature=0.0, max_tokens=80, structured_outputs=StructuredOutputsParams(json=SCHEMA)
    )
    (one,) = _run(engine_fp32, "tp1", PROMPT, params)
    (two,) = _run(tp2_engine, "tp2", PROMPT, params)
    jsonschema.validate(json.loads(two.outputs[0].text), SCHEMA)
    assert two.outputs[0].token_ids == one.outputs[0].token_ids
