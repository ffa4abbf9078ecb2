"""Chat rendering options (vLLM's): continue_final_message and chat_template_kwargs, with the bundled tokenizer."""

from __future__ import annotations

from typing import Any

import pytest

from pagedserve.engine.chat import ChatOptions, apply_chat_template
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


def render(tokenizer: Any, messages: Any, chat_template: str | None = None, **options: Any) -> str:
    return tokenizer.decode(apply_chat_template(tokenizer, messages, ChatOptions(**options), chat_template))


def test_continue_final_message_leaves_the_assistant_message_open(tokenizer: Any) -> None:
    text = render(tokenizer, CHAT, add_generation_prompt=False, continue_final_message=True)
    assert text.endswith("<|im_start|>assistant\nMy favourite colour is")
    closed = render(tokenizer, CHAT, add_generation_prompt=False)
    assert closed.endswith("My favourite colour is<|im_end|>\n")
    with pytest.raises(InvalidRequestError, match="cannot both be true") as caught:
        apply_chat_template(
            tokenizer, CHAT, ChatOptions(add_generation_prompt=True, continue_final_message=True)
        )
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
        apply_chat_template(tokenizer, CHAT[:1], ChatOptions(chat_template_kwargs=kwargs))
    assert caught.value.param == "chat_template_kwargs"


def test_add_special_tokens_adds_the_tokenizers_bos_to_the_rendered_chat() -> None:
    import tokenizers
    import transformers
    from tokenizers.processors import TemplateProcessing

    backend = tokenizers.Tokenizer(
        tokenizers.models.WordLevel({"<unk>": 0, "<s>": 1, "hi": 2}, unk_token="<unk>")
    )
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    backend.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>"
    )
    template = "{{ messages[0]['content'] }}"
    chat = [{"role": "user", "content": "hi"}]
    assert apply_chat_template(tokenizer, chat, chat_template=template) == [
        2
    ]  # vLLM's default for chat: none
    assert apply_chat_template(tokenizer, chat, ChatOptions(add_special_tokens=True), template) == [1, 2]


# A template that reads content parts, as multimodal-ready templates (Llama 3.2, Qwen2-VL, Mistral's) do.
PARTS_TEMPLATE = (
    "{% for m in messages %}[{{ m['role'] }}]{% for part in m['content'] %}({{ part['text'] }}){% endfor %}"
    "{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}"
)
PARTS = [{"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]}]


def test_content_format_auto_follows_the_template(tokenizer: Any) -> None:
    """vLLM's --chat-template-content-format: auto gives parts to a template that loops over content, else one
    string (text parts joined by a newline)."""
    from pagedserve.engine.chat import detect_content_format

    assert detect_content_format(PARTS_TEMPLATE) == "openai"
    assert detect_content_format(THINKING_TEMPLATE) == "string"
    assert detect_content_format(tokenizer.chat_template) == "string"  # the bundled model's
    assert detect_content_format("{% for p in m.content | selectattr('type') %}{% endfor %}") == "openai"
    assert render(tokenizer, PARTS, PARTS_TEMPLATE) == "[user](one)(two)[assistant]"
    plain = [{"role": "user", "content": "three"}]
    assert render(tokenizer, plain, PARTS_TEMPLATE) == "[user](three)[assistant]"  # a string becomes one part
    assert render(tokenizer, PARTS, THINKING_TEMPLATE) == "<user>one\ntwo</user><assistant>"


def test_content_format_can_be_forced(tokenizer: Any) -> None:
    forced = render(tokenizer, PARTS, THINKING_TEMPLATE, content_format="openai")
    assert "'text': 'one'" in forced  # the template prints the list it was given
    # string: the template loops over the characters of "one\ntwo", whose ['text'] is undefined (empty)
    assert (
        render(tokenizer, PARTS, PARTS_TEMPLATE, content_format="string")
        == "[user]" + "()" * 7 + "[assistant]"
    )
