"""Sampling parameters, as vLLM's: same field names, same defaults, validation that names the field."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pagedserve.pooling_params import PoolingParams

_INT64_MAX = 2**63 - 1


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class StructuredOutputsParams:
    """Constrain the output to a grammar (vLLM's `structured_outputs`): exactly one field is set."""

    json: str | dict | None = None  # a JSON schema (object or its JSON text)
    regex: str | None = None
    choice: list[str] | None = None  # the output is exactly one of these strings
    grammar: str | None = None  # EBNF: GBNF (llama.cpp's) or Lark
    json_object: bool | None = None  # any JSON object
    structural_tag: str | dict | None = None  # vLLM's structural_tag object (or its JSON text)

    KINDS = ("json", "regex", "choice", "grammar", "json_object", "structural_tag")

    def __post_init__(self) -> None:
        given = [kind for kind in self.KINDS if getattr(self, kind) not in (None, False)]
        if len(given) != 1:
            raise SamplingParams._bad(
                "structured_outputs",
                f"must set exactly one of {', '.join(self.KINDS)}; got {', '.join(given) or 'none'}.",
            )
        kind = given[0]
        value = getattr(self, kind)
        valid = {
            "json": isinstance(value, (str, dict)),
            "regex": isinstance(value, str) and bool(value),
            "choice": isinstance(value, list) and bool(value) and all(isinstance(c, str) for c in value),
            "grammar": isinstance(value, str) and bool(value.strip()),
            "json_object": value is True,
            "structural_tag": isinstance(value, (str, dict)),
        }[kind]
        if not valid:
            raise SamplingParams._bad(
                f"structured_outputs.{kind}", f"is not a valid value for {kind}: {str(value)[:80]!r}."
            )

    @property
    def kind(self) -> str:
        return next(kind for kind in self.KINDS if getattr(self, kind) not in (None, False))


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1 or 0: disabled
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    max_tokens: int | None = 16  # None: the rest of the context
    min_tokens: int = 0
    logprobs: int | None = None  # top-k alternatives per generated token, 0: only the sampled one
    prompt_logprobs: int | None = None
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    detokenize: bool = True
    structured_outputs: StructuredOutputsParams | None = None
    logit_bias: dict[int, float] | None = None  # token id -> added to its logit before sampling
    allowed_token_ids: list[int] | None = None  # only these tokens may be sampled
    bad_words: list[str] | None = None  # words never generated (their last token is banned after the rest)
    truncate_prompt_tokens: int | None = None  # keep only the prompt's last k tokens (-1: max_model_len)
    # Set by LLM.embed and /v1/embeddings (--runner pooling), not a vLLM field: the request's last prompt position's
    # hidden state is its result; the one token sampled there ends it and is not reported.
    pooling: PoolingParams | None = None
    # Filled by the engine from the tokenizer / generation config; not user-facing.
    all_stop_token_ids: set[int] = field(default_factory=set, repr=False)
    # The model's EOS ids: min_tokens forbids them even with ignore_eos (as vLLM does).
    eos_token_ids: set[int] = field(default_factory=set, repr=False)
    # bad_words as token ids, with and without a leading space (filled with the tokenizer, as vLLM does).
    bad_words_token_ids: list[list[int]] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        elif self.stop is None:
            self.stop = []
        elif isinstance(self.stop, (list, tuple)):
            self.stop = list(self.stop)
        else:
            raise self._bad("stop", "must be a non-empty string or a list of non-empty strings.")
        if self.stop_token_ids is None:
            self.stop_token_ids = []
        elif isinstance(self.stop_token_ids, (list, tuple)):
            self.stop_token_ids = list(self.stop_token_ids)
        else:
            raise self._bad("stop_token_ids", "must be a list of non-negative integers.")
        self._validate()
        # Kept when given: the engine adds EOS ids before the parameters travel to a worker process.
        self.all_stop_token_ids = set(self.stop_token_ids) | set(self.all_stop_token_ids)

    @property
    def greedy(self) -> bool:
        return self.temperature < 1e-5

    @staticmethod
    def _bad(name: str, message: str) -> ValueError:
        error = ValueError(f"{name} {message}")
        error.param = name  # type: ignore[attr-defined]
        return error

    def _validate(self) -> None:
        bad = self._bad

        if not _is_int(self.n) or self.n < 1:
            raise bad("n", f"must be an integer >= 1, got {self.n!r}.")
        if not _is_number(self.temperature) or not math.isfinite(self.temperature) or self.temperature < 0:
            raise bad("temperature", f"must be a finite number >= 0, got {self.temperature!r}.")
        if not _is_number(self.top_p) or not math.isfinite(self.top_p) or not 0 < self.top_p <= 1:
            raise bad("top_p", f"must be in (0, 1], got {self.top_p!r}.")
        if not _is_int(self.top_k) or self.top_k < -1:
            raise bad("top_k", f"must be -1 (disabled) or a positive integer, got {self.top_k!r}.")
        if not _is_number(self.min_p) or not math.isfinite(self.min_p) or not 0 <= self.min_p <= 1:
            raise bad("min_p", f"must be in [0, 1], got {self.min_p!r}.")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not _is_number(value) or not math.isfinite(value) or not -2 <= value <= 2:
                raise bad(name, f"must be in [-2, 2], got {value!r}.")
        rp = self.repetition_penalty
        if not _is_number(rp) or not math.isfinite(rp) or rp <= 0:
            raise bad("repetition_penalty", f"must be a finite number > 0, got {rp!r}.")
        if self.seed is not None and (not _is_int(self.seed) or not -_INT64_MAX <= self.seed <= _INT64_MAX):
            raise bad("seed", f"must be an integer, got {self.seed!r}.")
        if self.max_tokens is not None and (
            not _is_int(self.max_tokens) or not 1 <= self.max_tokens <= _INT64_MAX
        ):
            raise bad("max_tokens", f"must be an integer >= 1, got {self.max_tokens!r}.")
        if not _is_int(self.min_tokens) or self.min_tokens < 0:
            raise bad("min_tokens", f"must be an integer >= 0, got {self.min_tokens!r}.")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise bad("min_tokens", f"must be <= max_tokens ({self.max_tokens}), got {self.min_tokens}.")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 0):
                raise bad(name, f"must be an integer >= 0, got {value!r}.")
        if self.pooling is not None and (
            not isinstance(self.pooling, PoolingParams) or self.n != 1 or self.max_tokens != 1
        ):
            raise bad("pooling", "must be a PoolingParams, with n 1 and max_tokens 1 (an embedding request).")
        for s in self.stop:  # type: ignore[union-attr]
            if not isinstance(s, str) or not s:
                raise bad("stop", "must be a non-empty string or a list of non-empty strings.")
        so = self.structured_outputs
        if so is not None and not isinstance(so, StructuredOutputsParams):
            raise bad("structured_outputs", "must be a StructuredOutputsParams.")
        for t in self.stop_token_ids:
            if not _is_int(t) or t < 0:
                raise bad("stop_token_ids", f"must be non-negative integers, got {t!r}.")
        self._validate_token_controls()
        k = self.truncate_prompt_tokens
        if k is not None and (not _is_int(k) or not (k >= 1 or k == -1)):
            raise bad("truncate_prompt_tokens", f"must be an integer >= 1, or -1 (max_model_len); got {k!r}.")

    def _validate_token_controls(self) -> None:
        bad = self._bad
        if self.logit_bias is not None:
            if not isinstance(self.logit_bias, dict):
                raise bad("logit_bias", "must map token ids to numbers.")
            for token, value in self.logit_bias.items():
                if not _is_int(token) or token < 0:
                    raise bad("logit_bias", f"keys must be non-negative token ids, got {token!r}.")
                if not _is_number(value) or not math.isfinite(value):
                    raise bad(
                        "logit_bias", f"values must be finite numbers, got {value!r} for token {token}."
                    )
        if self.allowed_token_ids is not None:
            ids = self.allowed_token_ids
            if not isinstance(ids, (list, tuple)) or not ids:
                raise bad("allowed_token_ids", "must be a non-empty list of token ids.")
            if any(not _is_int(t) or t < 0 for t in ids):
                raise bad("allowed_token_ids", "must hold non-negative integer token ids.")
            self.allowed_token_ids = list(ids)
        if self.bad_words is not None:
            words = self.bad_words
            if not isinstance(words, (list, tuple)) or any(
                not isinstance(w, str) or not w.strip() for w in words
            ):
                raise bad("bad_words", "must be a list of non-empty strings.")
            self.bad_words = list(words)


def logprobs_over_limit(params: SamplingParams, max_logprobs: int) -> tuple[str, str] | None:
    """(field, vLLM's message) when `params` asks for more logprobs per token than --max-logprobs allows."""
    for name, kind in (("logprobs", "sample"), ("prompt_logprobs", "prompt")):
        asked = getattr(params, name)
        if asked is not None and asked > max_logprobs:
            return (
                name,
                f"Requested {kind} logprobs of {asked}, which is greater than max allowed: {max_logprobs}",
            )
    return None
