"""Request fields pagedserve does not implement are refused by name when set; no-op values and bookkeeping
fields pass; other unknown fields pass with one warning."""

from __future__ import annotations

import logging

import pytest

from pagedserve.server.errors import APIError
from pagedserve.server.openai.protocol import ChatCompletionRequest, CompletionRequest
from pagedserve.server.unsupported import refuse_unsupported_fields

CHAT = {"messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"logits_processors": ["my.module:Processor"]}, "logits_processors"),
        ({"guided_json": {"type": "object"}}, "guided_json"),
        ({"use_beam_search": True}, "use_beam_search"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"chat_template": "{{ messages }}"}, "chat_template"),
        ({"vllm_xargs": {"x": 1}}, "vllm_xargs"),
    ],
)
def test_set_unsupported_fields_are_refused_by_name(fields: dict, param: str) -> None:
    with pytest.raises(APIError) as caught:
        refuse_unsupported_fields(ChatCompletionRequest(**CHAT, **fields), "chat")
    assert caught.value.status == 400 and caught.value.param == param


@pytest.mark.parametrize(
    "fields",
    [{"logit_bias": {}}, {"use_beam_search": False}, {"length_penalty": 1.0}, {"priority": 0}, {"store": True},
     {"metadata": {"team": "a"}}, {"modalities": ["text"]}, {"tool_choice": "none"}],
)  # fmt: skip
def test_no_op_values_and_bookkeeping_pass(fields: dict) -> None:
    refuse_unsupported_fields(ChatCompletionRequest(**CHAT, **fields), "chat")


def test_completions_have_their_own_rules(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(APIError, match="prompt_embeds"):
        refuse_unsupported_fields(CompletionRequest(prompt="x", prompt_embeds="AAAA"), "completions")
    refuse_unsupported_fields(CompletionRequest(prompt="x", add_special_tokens=False), "completions")
    with caplog.at_level(logging.WARNING, logger="pagedserve"):
        for _ in range(2):
            refuse_unsupported_fields(CompletionRequest(prompt="x", frobnicate_level=3), "completions")
    assert [r.getMessage() for r in caplog.records].count(
        "ignoring unknown request field 'frobnicate_level' (first seen on /completions)"
    ) == 1
