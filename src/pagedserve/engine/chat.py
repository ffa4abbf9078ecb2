"""Chat messages -> prompt token ids through the model's chat template, with the messages validated first."""

from __future__ import annotations

from typing import Any

from pagedserve.errors import InvalidRequestError

ROLES = {"system", "user", "assistant", "tool", "developer"}


def normalize_messages(messages: Any) -> list[dict[str, str]]:
    """Validate OpenAI-style messages and flatten content parts to plain text."""
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
            content = "".join(parts)
        if not isinstance(content, str):
            raise InvalidRequestError(
                f"messages[{i}].content must be a string or text parts", param="messages"
            )
        result.append({"role": role, "content": content})
    return result


def apply_chat_template(
    tokenizer: Any, messages: Any, add_generation_prompt: bool = True, chat_template: str | None = None
) -> list[int]:
    normalized = normalize_messages(messages)
    if chat_template is None and not getattr(tokenizer, "chat_template", None):
        raise InvalidRequestError("this model has no chat template; pass --chat-template", param="messages")
    try:
        text = tokenizer.apply_chat_template(
            normalized,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            chat_template=chat_template,
        )
    except Exception as error:  # a template may raise on odd role orders (jinja2 raise_exception)
        raise InvalidRequestError(f"chat template failed: {str(error)[:200]}", param="messages") from None
    # The template already holds the BOS text; don't add special tokens twice.
    return tokenizer.encode(text, add_special_tokens=False)
