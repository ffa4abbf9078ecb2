"""logit_bias (OpenAI's), allowed_token_ids and bad_words (vLLM's) on a real server through the openai SDK."""

from __future__ import annotations

import time
import uuid

import httpx
import openai
import pytest
from openai import OpenAI

from .conftest import ServerProcess

pytestmark = [pytest.mark.server, pytest.mark.slow, pytest.mark.model]
MODEL = "SmolLM2-135M-Instruct"
PROMPT = "The capital of France is"


def token_ids(server: ServerProcess, text: str) -> list[int]:
    body = {"model": MODEL, "prompt": text, "add_special_tokens": False}
    return httpx.post(f"{server.url}/tokenize", json=body, timeout=30).json()["tokens"]


def greedy(sdk: OpenAI, max_tokens: int = 6, **extra: object) -> tuple[str, list[str]]:
    """(text, the tokens as strings) of a greedy completion of PROMPT."""
    response = sdk.completions.create(
        model=MODEL,
        prompt=PROMPT,
        max_tokens=max_tokens,
        temperature=0,
        logprobs=0,
        **extra,  # type: ignore[arg-type]
    )
    choice = response.choices[0]
    assert choice.logprobs is not None and choice.logprobs.tokens is not None
    return choice.text, choice.logprobs.tokens


def test_logit_bias_forces_and_forbids_tokens(sdk: OpenAI, server: ServerProcess) -> None:
    text, tokens = greedy(sdk, max_tokens=1)
    [london] = token_ids(server, " London")
    forced, _ = greedy(sdk, max_tokens=1, logit_bias={str(london): 100})
    assert forced == " London" != text
    [first] = token_ids(server, tokens[0])
    avoided, _ = greedy(sdk, max_tokens=1, logit_bias={str(first): -100})
    assert avoided != text
    # Out of OpenAI's range: clamped to +-100, as vLLM does.
    assert greedy(sdk, max_tokens=1, logit_bias={str(london): 1000})[0] == " London"


def test_allowed_token_ids_limit_every_generated_token(sdk: OpenAI, server: ServerProcess) -> None:
    allowed = {" yes": token_ids(server, " yes")[0], " no": token_ids(server, " no")[0]}
    _, tokens = greedy(sdk, max_tokens=5, extra_body={"allowed_token_ids": list(allowed.values())})
    assert len(tokens) == 5 and set(tokens) <= set(allowed), tokens
    sampled = sdk.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Is water wet?"}], max_tokens=4, temperature=1.0,
        seed=3, n=3, extra_body={"allowed_token_ids": list(allowed.values())},
    )  # fmt: skip
    for choice in sampled.choices:
        assert choice.message.content and set(choice.message.content.split()) <= {"yes", "no"}, choice


def test_bad_words_are_never_generated(sdk: OpenAI) -> None:
    text, _ = greedy(sdk, max_tokens=8)
    word = text.split()[0].strip(".,")  # greedy's first word (" Paris" for the bundled model)
    assert word
    avoided, _ = greedy(sdk, max_tokens=8, extra_body={"bad_words": [word]})
    assert word not in avoided.split(), (word, avoided)
    streamed = sdk.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=8, temperature=0, stream=True, extra_body={"bad_words": [word]}
    )
    assert "".join(chunk.choices[0].text for chunk in streamed) == avoided


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"logit_bias": {"the": 5}}, "logit_bias"),
        ({"allowed_token_ids": []}, "allowed_token_ids"),
        ({"allowed_token_ids": [1, 99999999]}, "allowed_token_ids"),
        ({"bad_words": [""]}, "bad_words"),
    ],
)
def test_bad_token_controls_are_400_naming_the_field(sdk: OpenAI, extra: dict, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2, extra_body=extra)
    error = caught.value.body
    assert isinstance(error, dict) and error.get("param") == param, error


def test_truncate_prompt_tokens_keeps_the_prompts_end(sdk: OpenAI, server: ServerProcess) -> None:
    ids = token_ids(server, PROMPT)
    cut = sdk.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0, echo=True,
        extra_body={"truncate_prompt_tokens": 3},
    )  # fmt: skip
    same = sdk.completions.create(model=MODEL, prompt=ids[-3:], max_tokens=4, temperature=0)
    assert cut.usage is not None and cut.usage.prompt_tokens == 3 < len(ids)
    tail = httpx.post(f"{server.url}/detokenize", json={"model": MODEL, "tokens": ids[-3:]}, timeout=30)
    assert cut.choices[0].text == tail.json()["prompt"] + same.choices[0].text  # echo: what the model saw
    chat = sdk.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2,
        extra_body={"truncate_prompt_tokens": 5},
    )  # fmt: skip
    assert chat.usage is not None and chat.usage.prompt_tokens == 5
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.completions.create(
            model=MODEL, prompt=PROMPT, max_tokens=2, extra_body={"truncate_prompt_tokens": 99999}
        )
    assert isinstance(caught.value.body, dict) and caught.value.body.get("param") == "truncate_prompt_tokens"


def test_cache_salt_isolates_prefix_cache_hits(sdk: OpenAI, server: ServerProcess) -> None:
    from .conftest import metric_value

    # A prompt no other test sends, several blocks long.
    prompt = f"{uuid.uuid4()} " + "Kubernetes schedules pods onto nodes. " * 12

    def hits_of(**extra: object) -> float:
        """Prefix-cache hits of one request, read once its stats are in (they reach /metrics after the reply)."""
        done = metric_value(server, "vllm:request_success_total", finished_reason="length")
        before = metric_value(server, "vllm:prefix_cache_hits_total")
        sdk.completions.create(model=MODEL, prompt=prompt, max_tokens=1, extra_body=extra)
        deadline = time.monotonic() + 10
        while metric_value(server, "vllm:request_success_total", finished_reason="length") <= done:
            assert time.monotonic() < deadline, "the request's stats never reached /metrics"
            time.sleep(0.05)
        return metric_value(server, "vllm:prefix_cache_hits_total") - before

    assert hits_of(cache_salt="tenant-a") == 0  # first time: nothing cached
    assert hits_of(cache_salt="tenant-a") > 0  # same salt: the prefix is shared
    assert hits_of(cache_salt="tenant-b") == 0  # another tenant cannot hit (or time) tenant a's blocks
    assert hits_of() == 0  # nor can a request without a salt
    assert hits_of() > 0
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.completions.create(model=MODEL, prompt=prompt, max_tokens=1, extra_body={"cache_salt": ""})
    assert isinstance(caught.value.body, dict) and caught.value.body.get("param") == "cache_salt"
