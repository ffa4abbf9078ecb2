"""Chat messages → prompt token ids through the model's chat template (run on the tokenizer thread)."""

from __future__ import annotations

from typing import Any

from pagedserve.engine.chat import ChatOptions
from pagedserve.errors import InvalidRequestError
from pagedserve.server.openai.protocol import ChatMessage


def plain_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """Messages as plain data for the engine's renderer (engine/chat.py, which joins text parts or keeps them as
    --chat-template-content-format says); an assistant's tool calls and a tool result's tool_call_id kept."""
    plain = []
    for message in messages:
        content: Any = message.content
        if isinstance(content, list):
            content = [{"type": "text", "text": part.text} for part in content]
        entry: dict[str, Any] = {"role": message.role, "content": content or ""}
        if message.name is not None:
            entry["name"] = message.name
        if message.tool_calls:
            entry["tool_calls"] = [call.model_dump() for call in message.tool_calls]
        if message.tool_call_id is not None:
            entry["tool_call_id"] = message.tool_call_id
        plain.append(entry)
    return plain


def chat_options(
    body: Any,
    content_format: str,
    tools: list[dict[str, Any]] | None = None,
    add_special_tokens: bool = False,
) -> ChatOptions:
    """The rendering fields of a chat or /tokenize request (vLLM's spellings); content_format: the server's
    --chat-template-content-format."""
    return ChatOptions(
        add_generation_prompt=body.add_generation_prompt is not False,
        continue_final_message=bool(body.continue_final_message),
        chat_template_kwargs=body.chat_template_kwargs,
        tools=tools,
        add_special_tokens=add_special_tokens,
        content_format=content_format,
    )


def render_chat(engine: Any, messages: list[dict[str, Any]], options: ChatOptions) -> list[int]:
    try:
        return engine.apply_chat_template(messages, options)
    except InvalidRequestError:
        raise
    except Exception:  # noqa: BLE001 - a template that rejects these messages (e.g. role order) is bad input
        raise InvalidRequestError(
            "The chat template could not be applied to these messages.", "messages"
        ) from None
