"""The engine options given as one JSON object each, as vLLM's: --structured-outputs-config and
--speculative-config. Typed and validated here; `EngineConfig` (config.py) holds them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal


def _json_object(text: str, name: str) -> dict:
    """A flag's JSON object value; ValueError names the flag."""
    import json

    try:
        values = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{name} must be a JSON object: {error}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{name} must be a JSON object")
    return values


def _check_keys(cls: type, values: dict, name: str) -> None:
    """ValueError naming the first key of a flag's JSON object that is not a field of `cls`."""
    known = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in known:
            raise ValueError(f"{name}.{key} is not supported (known: {', '.join(sorted(known))})")


@dataclass
class StructuredOutputsConfig:
    """--structured-outputs-config, a JSON object as vLLM's (e.g. '{"backend": "guidance"}')."""

    backend: Literal["auto", "guidance"] = "auto"
    """Grammar engine: llguidance ("guidance"; "auto" picks it). xgrammar, outlines and lm-format-enforcer are
    refused by name: this build ships llguidance only (no triton/tvm dependency on the CPU)."""

    disable_any_whitespace: bool = False
    """JSON outputs without whitespace between tokens (as vLLM's option): shorter, and small models cannot loop
    on blanks."""

    compile_timeout_s: float = 10.0
    """pagedserve's own: a request whose grammar takes longer to compile gets a 400 (vLLM has no bound)."""

    reasoning_parser: str = ""
    """deepseek_r1, qwen3 or granite (set by --reasoning-parser, as vLLM's): a constrained answer's grammar starts once the
    model's <think> block is closed, so a reasoning model thinks freely before its JSON. granite: the grammar starts at
    once (its markers are several tokens of plain text, and its own system prompt quotes them)."""

    _OTHER_BACKENDS = ("xgrammar", "outlines", "lm-format-enforcer")

    @classmethod
    def from_json(cls, text: str) -> StructuredOutputsConfig:
        """The flag's value; ValueError names the key that is wrong."""
        values = _json_object(text, "structured_outputs_config")
        _check_keys(cls, values, "structured_outputs_config")
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        if self.backend in self._OTHER_BACKENDS:
            raise ValueError(
                f"structured_outputs_config.backend {self.backend!r} is not available in pagedserve: use "
                "'guidance' (llguidance) or 'auto'"
            )
        if self.backend not in ("auto", "guidance"):
            raise ValueError(
                f"structured_outputs_config.backend must be auto or guidance, got {self.backend!r}"
            )
        if self.reasoning_parser not in ("", "deepseek_r1", "qwen3", "granite"):
            raise ValueError(
                "structured_outputs_config.reasoning_parser must be deepseek_r1, qwen3 or granite, got "
                f"{self.reasoning_parser!r}"
            )
        if not isinstance(self.disable_any_whitespace, bool):
            raise ValueError("structured_outputs_config.disable_any_whitespace must be true or false")
        timeout = self.compile_timeout_s
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 600:
            raise ValueError(
                f"structured_outputs_config.compile_timeout_s must be in (0, 600], got {timeout!r}"
            )


@dataclass
class SpeculativeConfig:
    """--speculative-config, a JSON object as vLLM's (e.g. '{"method": "ngram", "num_speculative_tokens": 4}'):
    n-gram (prompt lookup) drafts, verified by the model in the next step."""

    method: str = "ngram"
    """How drafts are proposed: ngram (the tokens that followed the latest n tokens' earliest earlier match in the
    sequence). Draft models, EAGLE, Medusa and MTP are refused by name."""

    num_speculative_tokens: int = 0
    """Draft tokens proposed per sequence and step (required, >= 1)."""

    prompt_lookup_max: int | None = None
    """Longest n-gram matched (vLLM's default: prompt_lookup_min, or 5 when neither is set)."""

    prompt_lookup_min: int | None = None
    """Shortest n-gram matched (vLLM's default: prompt_lookup_max, or 5 when neither is set)."""

    disable_by_batch_size: int | None = None
    """No drafts while more than this many sequences run (>= 2; vLLM's): with many sequences a step's matrix
    products are compute-bound, and verifying drafts costs more than it saves. None: always draft."""

    _MODEL_METHODS = (
        "draft_model",
        "eagle",
        "eagle3",
        "medusa",
        "mlp_speculator",
        "mtp",
        "deepseek_mtp",
        "suffix",
    )
    # Bounded so that a typo cannot make every step verify hundreds of tokens a sequence.
    MAX_TOKENS = 15

    @classmethod
    def from_json(cls, text: str) -> SpeculativeConfig:
        return cls.from_dict(_json_object(text, "speculative_config"))

    @classmethod
    def from_dict(cls, values: dict) -> SpeculativeConfig:
        """ValueError names the key that is wrong."""
        values = dict(values)
        if values.get("method") is None and values.get("model") in ("ngram", "[ngram]"):
            values["method"] = values.pop("model")  # vLLM's older spelling
        if values.get("method") == "[ngram]":
            values["method"] = "ngram"
        _check_keys(cls, values, "speculative_config")
        if "num_speculative_tokens" not in values:
            raise ValueError("speculative_config.num_speculative_tokens is required")
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        if self.method in self._MODEL_METHODS:
            raise ValueError(
                f"speculative_config.method {self.method!r} is not supported: pagedserve drafts with ngram only"
            )
        if self.method != "ngram":
            raise ValueError(f"speculative_config.method must be ngram, got {self.method!r}")
        k = self.num_speculative_tokens
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.MAX_TOKENS:
            raise ValueError(
                f"speculative_config.num_speculative_tokens must be an integer in [1, {self.MAX_TOKENS}], got {k!r}"
            )
        for name in ("prompt_lookup_max", "prompt_lookup_min"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"speculative_config.{name} must be an integer >= 1, got {value!r}")
        limit = self.disable_by_batch_size
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 2):
            raise ValueError(
                f"speculative_config.disable_by_batch_size must be an integer >= 2, got {limit!r}"
            )
        if self.lookup_min > self.lookup_max:
            raise ValueError(
                f"speculative_config.prompt_lookup_min ({self.lookup_min}) must be <= prompt_lookup_max "
                f"({self.lookup_max})"
            )

    @property
    def lookup_max(self) -> int:
        return self.prompt_lookup_max or self.prompt_lookup_min or 5

    @property
    def lookup_min(self) -> int:
        return self.prompt_lookup_min or self.prompt_lookup_max or 5
