"""Speculative decoding on a real server: `--speculative-config` as vLLM's, the same greedy text as the plain
shared server through the openai SDK (streamed too), vLLM's `vllm:spec_decode_*` counters and the stats line."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from .conftest import ServerProcess, metric_value

pytestmark = [pytest.mark.server, pytest.mark.slow, pytest.mark.model]

TEXT = "Roses are red, violets are blue, sugar is sweet, and so are you. Twinkle twinkle little star."
PROMPT = f"Repeat exactly:\n{TEXT}\nRepeated:"


def complete(server: ServerProcess, stream: bool = False) -> str:
    import openai

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=120)
    [model] = client.models.list().data
    kwargs = dict(model=model.id, prompt=PROMPT, max_tokens=40, temperature=0)
    if not stream:
        return client.completions.create(**kwargs).choices[0].text
    return "".join(
        chunk.choices[0].text for chunk in client.completions.create(**kwargs, stream=True) if chunk.choices
    )


def test_ngram_drafts_keep_the_greedy_text_and_report_acceptance(
    start_server: Callable[..., ServerProcess], server: ServerProcess
) -> None:
    # Both in float32: in bfloat16 (dtype auto on CPUs with bf16 instructions) a verify step's 4 rows and a prefix
    # cache hit round differently from a plain step's, and this prompt has a near tie: on a Zen 4 the streamed
    # spec run said "...the universe is" where the plain one said "...infinite, and" after 30 tokens.
    plain = start_server("--dtype", "float32")
    spec = start_server(
        "--dtype", "float32", "--speculative-config", '{"method": "ngram", "num_speculative_tokens": 3, '
        '"prompt_lookup_max": 3, "prompt_lookup_min": 2}',
    )  # fmt: skip
    expected = complete(plain)
    assert complete(spec) == expected
    assert complete(spec, stream=True) == expected
    drafts = metric_value(spec, "vllm:spec_decode_num_drafts_total")
    draft_tokens = metric_value(spec, "vllm:spec_decode_num_draft_tokens_total")
    accepted = metric_value(spec, "vllm:spec_decode_num_accepted_tokens_total")
    per_position = [
        metric_value(spec, "vllm:spec_decode_num_accepted_tokens_per_pos_total", position=str(p))
        for p in range(3)
    ]
    assert 0 < drafts and 0 < accepted <= draft_tokens <= 3 * drafts
    assert sum(per_position) == accepted and per_position == sorted(per_position, reverse=True)
    assert metric_value(server, "vllm:spec_decode_num_drafts_total") == 0  # not exposed without the flag
    # vLLM's periodic stats line, with the drafts' acceptance (logged every 5 s while busy or just after).
    deadline = time.monotonic() + 15
    while "Spec decode mean acceptance length" not in spec.log() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert "Spec decode mean acceptance length" in spec.log()
