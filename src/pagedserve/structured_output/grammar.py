"""A request's `structured_outputs` -> an llguidance grammar, checked against the tokenizer before the core sees it.

Runs in the front end. Every user error (a schema llguidance rejects, a bad regex or EBNF, a compile that does not
finish within `compile_timeout_s`) is an `InvalidRequestError` naming the field, so it is a 400 for that request
and never reaches the engine core. Validated grammars are cached by their source text: agents send the same tool
schemas on every call.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import llguidance
from llguidance import LLMatcher, LLTokenizer

from pagedserve.config import StructuredOutputsConfig
from pagedserve.errors import InvalidRequestError
from pagedserve.sampling_params import StructuredOutputsParams

# Distinct grammars kept validated; a tool-using client reuses a handful, a cache miss costs ~1-5 ms.
CACHE_SIZE = 256


def tokenizer_json(hf_tokenizer: Any) -> str:
    """The fast tokenizer's definition (tokenizer.json text): what llguidance builds its token trie from."""
    backend = getattr(hf_tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError("structured outputs need a fast (Rust `tokenizers`) tokenizer")
    import copy

    backend = copy.copy(backend)
    backend.no_padding()
    backend.no_truncation()
    return backend.to_str()


def build_ll_tokenizer(definition: str, vocab_size: int, eos_token_ids: list[int]) -> LLTokenizer:
    """The model's vocabulary (logit rows past the tokenizer's are never allowed) and its EOS ids."""
    return LLTokenizer(definition, n_vocab=vocab_size, eos_token=list(eos_token_ids) or None)


def grammar_source(spec: StructuredOutputsParams, config: StructuredOutputsConfig) -> str:
    """llguidance's grammar text for one spec; ValueError for malformed input llguidance cannot even parse."""
    kind = spec.kind
    options: dict[str, Any] = {"whitespace_flexible": False} if config.disable_any_whitespace else {}
    if kind == "json":
        schema = json.loads(spec.json) if isinstance(spec.json, str) else spec.json
        if not isinstance(schema, dict):
            raise ValueError("the JSON schema must be an object")
        return LLMatcher.grammar_from_json_schema(schema, overrides=options or None)  # type: ignore[arg-type]
    if kind == "json_object":
        return LLMatcher.grammar_from_json_schema({"type": "object"}, overrides=options or None)  # type: ignore[arg-type]
    if kind == "regex":
        return LLMatcher.grammar_from_regex(spec.regex or "")
    if kind == "choice":
        return llguidance.grammar_from("choice", json.dumps(spec.choice))
    if kind == "grammar":
        return llguidance.grammar_from("grammar", spec.grammar or "")
    return _structural_tag_grammar(spec.structural_tag)


def _structural_tag_grammar(value: str | dict | None) -> str:
    """vLLM's structural_tag: {"structures": [{"begin", "schema", "end"}], "triggers": [...]}: free text in which
    every tool call that starts with a trigger follows its structure's schema."""
    tag = json.loads(value) if isinstance(value, str) else value
    if not isinstance(tag, dict) or not isinstance(tag.get("structures"), list) or not tag["structures"]:
        raise ValueError('structural_tag must be an object with a non-empty "structures" list')
    triggers = tag.get("triggers")
    if not isinstance(triggers, list) or not triggers or not all(isinstance(t, str) and t for t in triggers):
        raise ValueError('structural_tag must have a non-empty "triggers" list of strings')
    tags = []
    for i, structure in enumerate(tag["structures"]):
        if not isinstance(structure, dict) or not isinstance(structure.get("begin"), str):
            raise ValueError(f'structural_tag.structures[{i}] must have a "begin" string')
        begin, end = structure["begin"], structure.get("end", "")
        trigger = next((t for t in triggers if begin.startswith(t)), None)
        if trigger is None:
            raise ValueError(
                f"structural_tag.structures[{i}].begin {begin!r} starts with none of the triggers"
            )
        schema = structure.get("schema", {})
        if not isinstance(schema, dict) or not isinstance(end, str):
            raise ValueError(f'structural_tag.structures[{i}]: "schema" must be an object, "end" a string')
        tags.append(llguidance.StructTag(trigger=trigger, begin=begin, grammar=schema, end=end))
    return LLMatcher.grammar_from_lark(llguidance.StructTag.to_grammar(tags, assume_special=False))


class GrammarCompiler:
    """Validates grammars on a worker thread under a time bound; remembers the ones that passed."""

    def __init__(
        self, hf_tokenizer: Any, vocab_size: int, eos_token_ids: list[int], config: StructuredOutputsConfig
    ) -> None:
        self.config = config
        self.vocab_size = vocab_size
        self.eos_token_ids = list(eos_token_ids)
        self._hf_tokenizer = hf_tokenizer
        self._definition: str | None = None
        self._ll_tokenizer: LLTokenizer | None = None
        self._cache: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()
        # One thread: compiles queue behind each other instead of taking both cores from the engine.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grammar-compile")

    @property
    def tokenizer_definition(self) -> str:
        """tokenizer.json text the engine core builds its own llguidance tokenizer from (sent once)."""
        if self._definition is None:
            self._definition = tokenizer_json(self._hf_tokenizer)
        return self._definition

    def compile(
        self, spec: StructuredOutputsParams, field: str = "structured_outputs"
    ) -> tuple[str, float | None]:
        """(llguidance grammar text for `spec`, validated; seconds the compile took, None when cached);
        InvalidRequestError (param=`field`) otherwise."""
        key = _cache_key(spec)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached, None
        started = time.perf_counter()
        future = self._pool.submit(self._validate, spec)
        try:
            grammar = future.result(timeout=self.config.compile_timeout_s)
        except FutureTimeout:
            raise InvalidRequestError(
                f"{field}: the grammar did not compile within {self.config.compile_timeout_s:g} s "
                "(structured_outputs_config.compile_timeout_s)",
                param=field,
            ) from None
        except ValueError as error:
            raise InvalidRequestError(f"{field}: {error}", param=field) from None
        with self._lock:
            self._cache[key] = grammar
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return grammar, time.perf_counter() - started

    def _validate(self, spec: StructuredOutputsParams) -> str:
        if self._ll_tokenizer is None:
            self._ll_tokenizer = build_ll_tokenizer(
                self.tokenizer_definition, self.vocab_size, self.eos_token_ids
            )
        try:
            grammar = grammar_source(spec, self.config)
        except (ValueError, TypeError, AssertionError) as error:
            raise ValueError(str(error) or type(error).__name__) from None
        is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar, self._ll_tokenizer)
        if is_error:
            raise ValueError(messages[0] if messages else "invalid grammar")
        return grammar

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _cache_key(spec: StructuredOutputsParams) -> str:
    kind = spec.kind
    return kind + "\0" + json.dumps(getattr(spec, kind), sort_keys=True, ensure_ascii=False)
