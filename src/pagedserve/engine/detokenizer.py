"""Incremental detokenization with stop strings, for streaming text that never has to be taken back.

Each step decodes only a short window: the tokens from `prefix_offset` (already shown, kept as context so
that merges such as a leading space or a multi-byte character decode as they would in the full text) up to the
end, and emits what the window adds past the text of its first part (`prefix_offset:read_offset`). While the
window ends in an incomplete UTF-8 sequence (U+FFFD) nothing is emitted and the window grows.
"""

from __future__ import annotations

import weakref
from typing import Any

from pagedserve.sampling_params import SamplingParams

_REPLACEMENT_CHAR = "\ufffd"
# Prompt tokens decoded as context before the first output token (vLLM uses the same small number).
_PROMPT_CONTEXT_TOKENS = 5


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Any, prompt_token_ids: list[int], params: SamplingParams) -> None:
        self._tokenizer = tokenizer
        self._params = params
        self._stop_strings: list[str] = list(params.stop or [])
        self._max_stop_len = max((len(s) for s in self._stop_strings), default=0)
        # Context tokens from the end of the prompt, then every output token.
        self._token_ids: list[int] = list(prompt_token_ids[-_PROMPT_CONTEXT_TOKENS:])
        self._prefix_offset = 0
        self._read_offset = len(self._token_ids)
        self._text = ""  # complete characters decoded so far (cut at a stop string once one matched)
        self._visible_len = 0  # how much of _text output_text shows
        self._num_output_tokens = 0
        self._stop_reason: str | None = None
        self._finished = False

    @property
    def stop_reason(self) -> str | None:
        """The stop string that ended the text, if one did."""
        return self._stop_reason

    @property
    def output_text(self) -> str:
        """Text safe to show now: complete characters only, minus a tail that could still start a stop string."""
        return self._text[: self._visible_len]

    def update(self, new_token_ids: list[int]) -> str | None:
        """Append generated tokens; returns the stop string that matched, if any.

        Stop strings count only once the output holds min_tokens tokens (as stop tokens are masked until
        then). Once a stop string has matched the text is final and further tokens are ignored.
        """
        if self._finished or not self._params.detokenize:
            return None
        for token_id in new_token_ids:
            self._token_ids.append(token_id)
            self._num_output_tokens += 1
            piece = self._decode_step(flush=False)
            if piece and self._append(piece, check_stop=self._num_output_tokens >= self._params.min_tokens):
                return self._stop_reason
        self._visible_len = len(self._text) - self._held_back_len()
        return None

    def finalize(self) -> str:
        """The full text when the request ends (length, EOS, abort): pending bytes flushed, nothing held back."""
        if not self._finished and self._params.detokenize:
            piece = self._decode_step(flush=True)
            if piece:
                self._append(piece, check_stop=self._num_output_tokens >= self._params.min_tokens)
        self._finished = True
        self._visible_len = len(self._text)
        return self._text

    def _decode_step(self, flush: bool) -> str:
        """Text added by the tokens past read_offset; "" while it would end in an incomplete character."""
        prefix_text = self._decode(self._token_ids[self._prefix_offset : self._read_offset])
        full_text = self._decode(self._token_ids[self._prefix_offset :])
        if len(full_text) <= len(prefix_text) or (full_text.endswith(_REPLACEMENT_CHAR) and not flush):
            # Nothing new, or a multi-byte character still waiting for its other bytes: keep the window.
            return ""
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._token_ids)
        return full_text[len(prefix_text) :]

    def _decode(self, token_ids: list[int]) -> str:
        if not token_ids:
            return ""
        # No clean-up: it rewrites " ." to "." and would break "the window text extends its prefix's text".
        return self._tokenizer.decode(
            token_ids,
            skip_special_tokens=self._params.skip_special_tokens,
            spaces_between_special_tokens=self._params.spaces_between_special_tokens,
            clean_up_tokenization_spaces=False,
        )

    def _append(self, piece: str, check_stop: bool) -> bool:
        """Add decoded text and look for a stop string ending in it; True (text cut) when one matched."""
        old_len = len(self._text)
        self._text += piece
        if not self._stop_strings or not check_stop:
            return False
        # A match not found before must end inside the new piece, so it starts at most max_len - 1 earlier.
        search_from = max(0, old_len - self._max_stop_len + 1)
        best_start, best_stop = -1, ""
        for stop in self._stop_strings:
            start = self._text.find(stop, search_from)
            if start != -1 and (best_start == -1 or start < best_start):
                best_start, best_stop = start, stop
        if best_start == -1:
            return False
        end = best_start + len(best_stop) if self._params.include_stop_str_in_output else best_start
        self._text = self._text[:end]
        self._stop_reason = best_stop
        self._finished = True
        self._visible_len = len(self._text)
        return True

    def _held_back_len(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of a stop string.

        Shown text never needs retracting: a later match starting inside the shown part would make a longer
        tail a stop-string prefix. With include_stop_str_in_output the cut falls after the stop string, past
        everything shown, so nothing is held back.
        """
        if not self._stop_strings or self._params.include_stop_str_in_output:
            return 0
        text = self._text
        for length in range(min(self._max_stop_len - 1, len(text)), 0, -1):
            tail = text[-length:]
            if any(stop.startswith(tail) for stop in self._stop_strings):
                return length
        return 0


# token id -> text, per tokenizer: logprobs ask for the same few thousand tokens over and over.
_TOKEN_TEXT_CACHE: weakref.WeakKeyDictionary[Any, dict[int, str]] = weakref.WeakKeyDictionary()


def decode_token(tokenizer: Any, token_id: int) -> str:
    """Text of one token, for logprobs' decoded_token (special tokens spelled out, partial bytes as U+FFFD)."""
    try:
        cache = _TOKEN_TEXT_CACHE.setdefault(tokenizer, {})
    except TypeError:  # a tokenizer that cannot be weakly referenced: no cache
        cache = {}
    text = cache.get(token_id)
    if text is None:
        text = tokenizer.decode([token_id], skip_special_tokens=False) or ""
        cache[token_id] = text
    return text
