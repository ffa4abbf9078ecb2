"""Chat messages → prompt token ids through the model's chat template (run on the tokenizer thread)."""

from __future__ import annotations

from typing import Any

from pagedserve.errors import InvalidRequestError
from pagedserve.server.openai.protocol import ChatMessage


def plain_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """Messages as the chat template expects them: text parts joined into one string; an assistant's tool calls
    and a tool result's tool_call_id kept."""
    plain = []
    for message in messages:
        content = message.content
        if isinstance(content, list):
            content = "\n".join(part.text for part in content)
        entry: dict[str, Any] = {"role": message.role, "content": content or ""}
        if message.name is not None:
            entry["name"] = message.name
        if message.tool_calls:
            entry["tool_calls"] = [call.model_dump() for call in message.tool_calls]
        if message.tool_call_id is not None:
            entry["tool_call_id"] = message.tool_call_id
        plain.append(entry)
    return plain


def render_chat(
    engine: Any,
    messages: list[dict[str, Any]],
    add_generation_prompt: bool,
    tools: list[dict[str, Any]] | None = None,
    continue_final_message: bool = False,
    chat_template_kwargs: dict[str, Any] | None = None,
) -> list[int]:
    try:
        return engine.apply_chat_template(
            messages, add_generation_prompt, None, tools, continue_final_message, chat_template_kwargs
        )
    except InvalidRequestError:
        raise
    except Exception:  # noqa: BLE001 - a template that rejects these messages (e.g. role order) is bad input
        raise InvalidRequestError(
            "The chat template could not be applied to these messages.", "messages"
        ) from None
