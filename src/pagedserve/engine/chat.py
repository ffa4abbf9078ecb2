"""Chat messages -> prompt token ids through the model's chat template, with the messages validated first."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jinja2

from pagedserve.errors import InvalidRequestError

ROLES = {"system", "user", "assistant", "tool", "developer"}
# Arguments of transformers' apply_chat_template that the request sets through its own fields (or that would change
# what comes back): a chat_template_kwargs key may not override them. Any other key is a template variable.
RESERVED_TEMPLATE_KWARGS = frozenset({
    "conversation", "messages", "tools", "documents", "chat_template", "add_generation_prompt",
    "continue_final_message", "tokenize", "padding", "truncation", "max_length", "return_tensors", "return_dict",
    "return_assistant_tokens_mask", "tokenizer_kwargs",
})  # fmt: skip


def normalize_messages(messages: Any, content_format: str = "string") -> list[dict[str, Any]]:
    """Validate OpenAI-style messages; content as the template reads it (vLLM's --chat-template-content-format):
    "string" joins text parts with newlines, "openai" gives every content as a list of {"type": "text", "text"}
    parts. An assistant's tool_calls and a tool message's tool_call_id / name go to the template too (call
    arguments as objects, as templates expect)."""
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestError("messages must be a non-empty list", param="messages")
    result = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequestError(f"messages[{i}] must be an object", param="messages")
        role = message.get("role")
        if role not in ROLES:
            raise InvalidRequestError(
                f"messages[{i}].role must be one of {', '.join(sorted(ROLES))}", param="messages"
            )
        content = message.get("content")
        if content is None:
            content = ""
        if isinstance(content, list):
            parts = []
            for part in content:
                if (
                    not isinstance(part, dict)
                    or part.get("type") != "text"
                    or not isinstance(part.get("text"), str)
                ):
                    raise InvalidRequestError(
                        f"messages[{i}].content parts must be {{'type': 'text', 'text': str}}",
                        param="messages",
                    )
                parts.append(part["text"])
            content = "\n".join(parts)  # vLLM's join
        elif not isinstance(content, str):
            raise InvalidRequestError(
                f"messages[{i}].content must be a string or text parts", param="messages"
            )
        else:
            parts = [content]
        entry: dict[str, Any] = {"role": role, "content": content}
        if content_format == "openai":
            entry["content"] = [{"type": "text", "text": text} for text in parts]
        if role == "assistant" and message.get("tool_calls"):
            entry["tool_calls"] = [_template_tool_call(call, i) for call in message["tool_calls"]]
        if role == "tool" and message.get("tool_call_id") is not None:
            entry["tool_call_id"] = message["tool_call_id"]
        if message.get("name") is not None:
            entry["name"] = message["name"]
        result.append(entry)
    return result


def _template_tool_call(call: Any, i: int) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise InvalidRequestError(f"messages[{i}].tool_calls entries need function.name", param="messages")
    arguments = function.get("arguments", "{}")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            pass  # left as text: some templates print it as is
    return {
        "id": call.get("id"),
        "type": "function",
        "function": {"name": function["name"], "arguments": arguments},
    }


@dataclass
class ChatOptions:
    """How a chat is rendered: vLLM's request fields for it."""

    add_generation_prompt: bool = True  # open the assistant's turn
    continue_final_message: bool = False  # leave the last message (an assistant's prefix) open instead
    chat_template_kwargs: dict[str, Any] | None = None  # extra template variables (e.g. enable_thinking)
    tools: list[dict[str, Any]] | None = None  # what the template shows the model
    add_special_tokens: bool = False  # also the tokenizer's own special tokens (BOS) around the rendered text
    content_format: str = "auto"  # --chat-template-content-format: auto (from the template), string or openai


CONTENT_FORMATS = ("auto", "string", "openai")


@lru_cache(maxsize=16)
def detect_content_format(template: str) -> str:
    """vLLM's auto rule: "openai" when the template loops over a message's content (it expects parts), else
    "string"; a template Jinja cannot parse is left to fail when rendered."""
    try:
        tree = jinja2.Environment().parse(template)
    except jinja2.TemplateSyntaxError:
        return "string"
    for loop in tree.find_all(jinja2.nodes.For):
        source = loop.iter
        while (
            isinstance(source, jinja2.nodes.Filter) and source.node is not None
        ):  # e.g. content | selectattr
            source = source.node
        if (isinstance(source, jinja2.nodes.Getitem) and isinstance(source.arg, jinja2.nodes.Const)
                and source.arg.value == "content") or (
                isinstance(source, jinja2.nodes.Getattr) and source.attr == "content"):  # fmt: skip
            return "openai"
    return "string"


def apply_chat_template(
    tokenizer: Any, messages: Any, options: ChatOptions | None = None, chat_template: str | None = None
) -> list[int]:
    """Token ids of a chat rendered by the model's template (or `chat_template`)."""
    options = options or ChatOptions()
    template = chat_template or getattr(tokenizer, "chat_template", None)
    if not template:
        raise InvalidRequestError("this model has no chat template; pass --chat-template", param="messages")
    content_format = options.content_format
    if content_format == "auto":
        content_format = detect_content_format(template) if isinstance(template, str) else "string"
    normalized = normalize_messages(messages, content_format)
    if options.continue_final_message and options.add_generation_prompt:
        raise InvalidRequestError(
            "continue_final_message and add_generation_prompt cannot both be true",
            param="continue_final_message",
        )
    template_kwargs = check_template_kwargs(options.chat_template_kwargs)
    try:
        text = tokenizer.apply_chat_template(
            normalized,
            tokenize=False,
            add_generation_prompt=options.add_generation_prompt,
            continue_final_message=options.continue_final_message,
            chat_template=chat_template,
            tools=options.tools or None,
            **template_kwargs,
        )
    except Exception as error:  # a template may raise on odd role orders (jinja2 raise_exception)
        raise InvalidRequestError(f"chat template failed: {str(error)[:200]}", param="messages") from None
    # The template already holds the BOS text: special tokens only when asked (vLLM's default is false for chat).
    return tokenizer.encode(text, add_special_tokens=options.add_special_tokens)


def check_template_kwargs(kwargs: Any) -> dict[str, Any]:
    """chat_template_kwargs as template variables: an object whose keys are names the request does not set."""
    if kwargs is None:
        return {}
    if not isinstance(kwargs, dict) or not all(isinstance(key, str) for key in kwargs):
        raise InvalidRequestError("chat_template_kwargs must be an object", param="chat_template_kwargs")
    reserved = sorted(RESERVED_TEMPLATE_KWARGS.intersection(kwargs))
    if reserved:
        raise InvalidRequestError(
            f"chat_template_kwargs may not set {', '.join(reserved)}: use the request's own fields",
            param="chat_template_kwargs",
        )
    return kwargs
