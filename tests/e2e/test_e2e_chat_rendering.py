"""vLLM's chat rendering fields on a real server: continue_final_message (the assistant's message continued) and
chat_template_kwargs, on /v1/chat/completions and /tokenize."""

from __future__ import annotations

import httpx
import openai
import pytest
from openai import OpenAI

from .conftest import ServerProcess

pytestmark = [pytest.mark.server, pytest.mark.slow, pytest.mark.model]
MODEL = "SmolLM2-135M-Instruct"
PREFILLED = [
    {"role": "user", "content": "Name three colors."},
    {"role": "assistant", "content": "Three colors are red,"},
]
CONTINUE = {"continue_final_message": True, "add_generation_prompt": False}


def tokenize(server: ServerProcess, **body: object) -> httpx.Response:
    return httpx.post(f"{server.url}/tokenize", json={"model": MODEL, **body}, timeout=30)


def test_continue_final_message_continues_the_assistant_text(sdk: OpenAI, server: ServerProcess) -> None:
    tokens = tokenize(server, messages=PREFILLED, **CONTINUE).json()["tokens"]
    rendered = httpx.post(f"{server.url}/detokenize", json={"model": MODEL, "tokens": tokens}, timeout=30)
    assert rendered.json()["prompt"].endswith("<|im_start|>assistant\nThree colors are red,")
    chat = sdk.chat.completions.create(
        model=MODEL,
        messages=PREFILLED,
        max_tokens=8,
        temperature=0,
        extra_body=CONTINUE,  # type: ignore[arg-type]
    )
    # The continuation only, exactly what the same prompt gives as a completion.
    same = sdk.completions.create(model=MODEL, prompt=tokens, max_tokens=8, temperature=0)
    assert chat.choices[0].message.content == same.choices[0].text
    assert chat.usage is not None and chat.usage.prompt_tokens == len(tokens)


def test_chat_template_kwargs_reach_the_template(server: ServerProcess) -> None:
    plain = tokenize(server, messages=PREFILLED[:1]).json()["tokens"]
    # The bundled template has no variables of its own: an unused one changes nothing; a reserved one is a 400.
    assert (
        tokenize(server, messages=PREFILLED[:1], chat_template_kwargs={"enable_thinking": False}).json()[
            "tokens"
        ]
        == plain
    )
    refused = tokenize(server, messages=PREFILLED[:1], chat_template_kwargs={"tokenize": True})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "chat_template_kwargs"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        (
            {"continue_final_message": True},
            "continue_final_message",
        ),  # add_generation_prompt defaults to true
        ({"chat_template_kwargs": {"add_generation_prompt": False}}, "chat_template_kwargs"),
        ({"chat_template_kwargs": ["enable_thinking"]}, "chat_template_kwargs"),
    ],
)
def test_bad_rendering_fields_are_400_naming_the_field(sdk: OpenAI, extra: dict, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(model=MODEL, messages=PREFILLED, max_tokens=2, extra_body=extra)  # type: ignore[arg-type]
    error = caught.value.body
    assert isinstance(error, dict) and error.get("param") == param, error
