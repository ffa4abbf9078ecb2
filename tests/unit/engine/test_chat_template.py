"""Chat rendering options (vLLM's): continue_final_message and chat_template_kwargs, with the bundled tokenizer."""

from __future__ import annotations

from typing import Any

import pytest

from pagedserve.engine.chat import apply_chat_template
from pagedserve.errors import InvalidRequestError

CHAT = [
    {"role": "user", "content": "Name a color."},
    {"role": "assistant", "content": "My favourite colour is"},
]
# A template with a variable of its own, as Qwen3's enable_thinking.
THINKING_TEMPLATE = (
    "{% for m in messages %}<{{ m.role }}>{{ m.content }}</{{ m.role }}>{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% if enable_thinking is false %}<think></think>{% endif %}{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from pagedserve.models.loader import load_tokenizer, resolve_model_source

    return load_tokenizer(resolve_model_source(None))


def render(tokenizer: Any, *args: Any, **kwargs: Any) -> str:
    return tokenizer.decode(apply_chat_template(tokenizer, *args, **kwargs))


def test_continue_final_message_leaves_the_assistant_message_open(tokenizer: Any) -> None:
    text = render(tokenizer, CHAT, add_generation_prompt=False, continue_final_message=True)
    assert text.endswith("<|im_start|>assistant\nMy favourite colour is")
    closed = render(tokenizer, CHAT, add_generation_prompt=False)
    assert closed.endswith("My favourite colour is<|im_end|>\n")
    with pytest.raises(InvalidRequestError, match="cannot both be true") as caught:
        apply_chat_template(tokenizer, CHAT, add_generation_prompt=True, continue_final_message=True)
    assert caught.value.param == "continue_final_message"


def test_chat_template_kwargs_are_template_variables(tokenizer: Any) -> None:
    chat = CHAT[:1]
    plain = render(tokenizer, chat, chat_template=THINKING_TEMPLATE)
    assert plain == "<user>Name a color.</user><assistant>"
    off = render(
        tokenizer, chat, chat_template=THINKING_TEMPLATE, chat_template_kwargs={"enable_thinking": False}
    )
    assert off == "<user>Name a color.</user><assistant><think></think>"
    # A variable the template does not use changes nothing (vLLM drops it).
    assert render(tokenizer, chat, chat_template_kwargs={"unused": 1}) == render(tokenizer, chat)


@pytest.mark.parametrize(
    "kwargs", [{"tokenize": True}, {"add_generation_prompt": False}, {"chat_template": "x"}, [1]]
)
def test_chat_template_kwargs_may_not_override_the_request(tokenizer: Any, kwargs: Any) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        apply_chat_template(tokenizer, CHAT[:1], chat_template_kwargs=kwargs)
    assert caught.value.param == "chat_template_kwargs"
