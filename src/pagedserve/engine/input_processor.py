"""The front end's half of admission: a client's prompt and parameters -> a validated `EngineCoreRequest` in token
ids, and the `RequestState` that will collect its outputs. Every refusal happens here, before the core sees it."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pagedserve.config import EngineConfig, StructuredOutputsConfig
from pagedserve.core.scheduler_output import ReasoningGate
from pagedserve.engine.chat import ChatOptions, apply_chat_template
from pagedserve.engine.core_messages import EngineCoreRequest
from pagedserve.engine.detokenizer import IncrementalDetokenizer
from pagedserve.engine.prompts import PromptInput, prompt_cache_salt, resolve_prompt
from pagedserve.engine.request_state import RequestState, SequenceState
from pagedserve.errors import ContextLengthError, InvalidRequestError
from pagedserve.lora.adapter import AdapterChecker
from pagedserve.lora.request import LoRARequest
from pagedserve.outputs import EngineInfo
from pagedserve.sampling_params import SamplingParams, logprobs_over_limit
from pagedserve.structured_output.grammar import GrammarCompiler

if TYPE_CHECKING:
    from pagedserve.models.loader import ModelSource

logger = logging.getLogger("pagedserve")


def lora_checker_for(config: EngineConfig, source: ModelSource) -> AdapterChecker | None:
    """The front end's adapter check (--enable-lora), or None."""
    if not config.lora.enable_lora:
        return None
    return AdapterChecker(source.hf_config, config.lora.max_lora_rank)


def load_tokenizer_for(config: EngineConfig) -> tuple[Any, ModelSource]:
    """(tokenizer, resolved model source) for `config`, from local files, without reading the weights."""
    from pagedserve.models.loader import load_tokenizer, resolve_model_source

    mc = config.model
    source = resolve_model_source(
        mc.model, mc.load_format, revision=mc.revision, download_dir=mc.download_dir,
        hf_overrides=mc.hf_overrides,
    )  # fmt: skip
    tokenizer_revision = mc.tokenizer_revision or mc.revision  # vLLM's default
    return load_tokenizer(
        source, mc.tokenizer, revision=tokenizer_revision, download_dir=mc.download_dir
    ), source


def generation_defaults_for(config: EngineConfig, source: ModelSource) -> dict[str, Any]:
    """--generation-config: the default sampling parameters, as SamplingParams fields (vLLM's rules).

    auto: the model's generation_config.json (or a GGUF's general.sampling.*); vllm: none; else a folder holding a
    generation_config.json; then --override-generation-config over them. max_new_tokens becomes max_tokens, which
    the server uses as a cap."""
    from pagedserve.models.hf_folder import GENERATION_DEFAULT_KEYS, read_generation_config

    choice = config.model.generation_config
    overrides = dict(config.model.override_generation_config or {})
    if unknown := sorted(set(overrides) - set(GENERATION_DEFAULT_KEYS)):
        raise ValueError(
            f"override_generation_config: unknown key(s) {', '.join(unknown)} (accepted: "
            f"{', '.join(GENERATION_DEFAULT_KEYS)})"
        )
    if choice == "vllm":
        raw: dict[str, Any] = {}
    elif choice == "auto":
        raw = dict(source.generation_defaults)
    else:
        folder = Path(choice)
        if not (folder / "generation_config.json").is_file():
            raise ValueError(
                f"generation_config must be auto, vllm or a folder holding generation_config.json; got {choice!r}"
            )
        raw = read_generation_config(folder)[0]
    raw.update(overrides)
    defaults = {("max_tokens" if key == "max_new_tokens" else key): value for key, value in raw.items()}
    try:
        SamplingParams(**defaults)
    except (ValueError, TypeError) as error:
        raise ValueError(f"generation_config / override_generation_config: {error}") from None
    return defaults


class InputProcessor:
    def __init__(
        self,
        tokenizer: Any,
        info: EngineInfo,
        chat_template: str | None = None,
        structured_outputs: StructuredOutputsConfig | None = None,
        generation_defaults: dict[str, Any] | None = None,
        lora_checker: AdapterChecker | None = None,
    ) -> None:
        """`info` is the core's; its eos_token_ids gain the tokenizer's EOS id here, and its
        default_sampling_params the model's generation defaults. `lora_checker`: with --enable-lora."""
        self.tokenizer = tokenizer
        self.lora_checker = lora_checker
        self.info = info
        eos = set(info.eos_token_ids)
        if tokenizer.eos_token_id is not None:
            eos.add(int(tokenizer.eos_token_id))
        info.eos_token_ids = sorted(eos)
        self.eos_token_ids = frozenset(eos)
        self.chat_template = read_chat_template(chat_template)
        info.default_sampling_params = dict(generation_defaults or {})
        if info.default_sampling_params:
            logger.info(
                "Default sampling parameters from the model's generation config (--generation-config vllm to "
                "ignore them): %s", info.default_sampling_params,
            )  # fmt: skip
        self.grammars = GrammarCompiler(
            tokenizer, info.vocab_size, sorted(eos), structured_outputs or StructuredOutputsConfig()
        )
        parser = (structured_outputs or StructuredOutputsConfig()).reasoning_parser
        # "<think>" and "</think>" as token ids, when constrained answers wait for the reasoning (--reasoning-parser).
        self.think_tags: tuple[str, list[int], list[int]] | None = None
        if parser in ("deepseek_r1", "qwen3"):  # granite's markers are plain text: its grammar starts at once
            encode = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
            self.think_tags = (parser, encode("<think>"), encode("</think>"))

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        options: ChatOptions | None = None,
        chat_template: str | None = None,
    ) -> list[int]:
        return apply_chat_template(self.tokenizer, messages, options, chat_template or self.chat_template)

    def process(
        self,
        request_id: str,
        prompt: PromptInput,
        params: SamplingParams,
        arrival_time: float,
        priority: int = 0,
        lora_request: LoRARequest | None = None,
    ) -> tuple[EngineCoreRequest, RequestState]:
        if not isinstance(request_id, str) or not request_id:
            raise InvalidRequestError("request_id must be a non-empty string", param="request_id")
        if not isinstance(params, SamplingParams):
            raise InvalidRequestError("params must be a SamplingParams", param="sampling_params")
        info = self.info
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise InvalidRequestError(f"priority must be an integer, got {priority!r}", param="priority")
        if priority != 0 and info.scheduling_policy != "priority":
            raise InvalidRequestError(
                "priority scheduling is not enabled: start the server with --scheduling-policy priority",
                param="priority",
            )
        self.check_lora(lora_request)
        if (params.pooling is not None) != (info.runner == "pooling"):
            raise InvalidRequestError(
                "this model serves embeddings only (--runner pooling)"
                if info.runner == "pooling"
                else "embeddings need a model served with --runner pooling",
                param="model",
                code="model_not_supported",
            )
        if over := logprobs_over_limit(params, info.max_logprobs):  # --max-logprobs
            raise InvalidRequestError(over[1], param=over[0])
        prompt_text, prompt_ids = resolve_prompt(self.tokenizer, prompt, info.vocab_size)
        max_len = info.max_model_len
        keep = params.truncate_prompt_tokens
        if keep is not None:
            if keep > max_len:
                raise InvalidRequestError(
                    f"truncate_prompt_tokens ({keep}) is greater than max_model_len ({max_len})",
                    param="truncate_prompt_tokens",
                )
            keep = max_len if keep == -1 else keep
            if len(prompt_ids) > keep:
                # The last tokens, as vLLM: the text is what the model sees (echo returns it).
                prompt_ids = prompt_ids[-keep:]
                prompt_text = self.tokenizer.decode(prompt_ids) if prompt_text is not None else None
        num_prompt = len(prompt_ids)
        # An embedding or score request computes its prompt only (its one "token" is never run): a prompt may fill
        # max_model_len, as a 512-token text fills BERT's positions.
        pooling = params.pooling is not None
        if num_prompt > max_len or (num_prompt == max_len and not pooling):
            raise ContextLengthError(
                max_len, num_prompt + (params.max_tokens or 0), num_prompt, param="prompt"
            )
        max_tokens = params.max_tokens if params.max_tokens is not None else max_len - num_prompt
        computed = num_prompt + (0 if pooling else max_tokens)  # the positions the request will run
        if computed > max_len:
            raise ContextLengthError(max_len, num_prompt + max_tokens, num_prompt, param="max_tokens")
        if computed > (info.max_sequence_tokens or info.num_kv_blocks * info.block_size):
            raise InvalidRequestError(
                f"prompt + max_tokens = {computed} tokens can never fit the KV cache "
                f"({info.num_kv_blocks} blocks of {info.block_size} tokens)",
                param="max_tokens",
                code="kv_cache_too_small",
            )
        grammar = compile_time = gate = None
        if params.structured_outputs is not None:
            grammar, compile_time = self.grammars.compile(params.structured_outputs)
            gate = reasoning_gate(self.think_tags, prompt_ids)
        params = copy.copy(params)
        check_token_controls(self.tokenizer, params, info.vocab_size)
        # A stop id past the vocabulary can never be sampled: dropped, which changes no output (vLLM keeps it); one
        # past 2^64 could not even cross to the engine core (msgpack), past 2^63 not into an int64 tensor.
        params.stop_token_ids = [t for t in params.stop_token_ids or [] if t < info.vocab_size]
        stops = set(params.stop_token_ids)
        params.all_stop_token_ids = stops if params.ignore_eos else stops | self.eos_token_ids
        params.eos_token_ids = set(self.eos_token_ids)
        request = EngineCoreRequest(
            request_id,
            prompt_ids,
            params,
            arrival_time,
            max_tokens,
            sorted(self.eos_token_ids),
            grammar,
            prompt_cache_salt(prompt),
            priority,
            gate,
            lora_request,
        )
        detokenizers = [
            IncrementalDetokenizer(self.tokenizer, prompt_ids, params) if params.detokenize else None
            for _ in range(params.n)
        ]
        sequences = [SequenceState() for _ in range(params.n)]
        state = RequestState(
            request_id, prompt_text, prompt_ids, params, arrival_time, sequences, detokenizers
        )
        state.grammar_compile_time = compile_time
        return request, state

    def check_lora(self, lora_request: LoRARequest | None) -> None:
        """InvalidRequestError when LoRA is off or the adapter's folder does not fit the model."""
        if lora_request is None:
            return
        if not isinstance(lora_request, LoRARequest):
            raise InvalidRequestError("lora_request must be a LoRARequest", param="lora_request")
        if self.lora_checker is None:
            raise InvalidRequestError(
                f"LoRA adapter {lora_request.lora_name!r} requested but LoRA is not enabled (--enable-lora)",
                param="lora_request",
            )
        try:
            self.lora_checker.check(lora_request.lora_int_id, lora_request.lora_path)
        except ValueError as error:
            raise InvalidRequestError(str(error), param="lora_request") from None


def reasoning_gate(
    think_tags: tuple[str, list[int], list[int]] | None, prompt_ids: list[int]
) -> ReasoningGate | None:
    """How a constrained answer's grammar waits for the reasoning (vLLM's structured outputs with a reasoning
    parser): not at all when the prompt already closed a <think> block (Qwen3 with enable_thinking false);
    deepseek_r1: the answer starts inside the block (its template opens it); qwen3: its first token may open the
    block, when "<think>" is one token (else the grammar starts at once)."""
    if think_tags is None:
        return None
    parser, start, end = think_tags
    if _last_index(prompt_ids, end) > _last_index(prompt_ids, start):
        return None
    if parser == "deepseek_r1" or _last_index(prompt_ids, start) >= 0:  # inside a block the prompt opened
        return ReasoningGate(end)
    if len(start) == 1:
        return ReasoningGate(end, start_token_id=start[0], thinking=False)
    return None


def _last_index(ids: list[int], pattern: list[int]) -> int:
    """Start of the last occurrence of `pattern` in `ids`, or -1."""
    size = len(pattern)
    if not size:
        return -1
    for start in range(len(ids) - size, -1, -1):
        if ids[start : start + size] == pattern:
            return start
    return -1


def check_token_controls(tokenizer: Any, params: SamplingParams, vocab_size: int) -> None:
    """logit_bias / allowed_token_ids must name tokens of the model; bad_words become token ids (vLLM's rule: each
    word as written and, when that makes a different word of as many tokens, with a leading space)."""
    for name, ids in (("logit_bias", params.logit_bias), ("allowed_token_ids", params.allowed_token_ids)):
        outside = sorted(t for t in ids or () if t >= vocab_size)
        if outside:
            raise InvalidRequestError(
                f"{name} holds token ids outside the model's vocabulary of {vocab_size}: {outside[:10]}",
                param=name,
            )
    params.bad_words_token_ids = []
    for index, word in enumerate(params.bad_words or ()):
        plain = tokenizer.encode(word.lstrip(), add_special_tokens=False)
        if (
            not plain
        ):  # "", spaces, or characters the tokenizer drops: a ban of nothing (a 500 before, schemathesis)
            raise InvalidRequestError(f"bad_words[{index}] ({word!r}) has no tokens", param="bad_words")
        spaced = tokenizer.encode(" " + word.lstrip(), add_special_tokens=False)
        params.bad_words_token_ids.append(plain)
        if spaced and spaced[0] != plain[0] and len(spaced) == len(plain):
            params.bad_words_token_ids.append(spaced)
    outside = sorted({t for ids in params.bad_words_token_ids for t in ids if t >= vocab_size})
    if outside:
        raise InvalidRequestError(
            f"bad_words tokenize to ids outside the model's vocabulary of {vocab_size}: {outside[:10]}",
            param="bad_words",
        )


def read_chat_template(value: str | None) -> str | None:
    """--chat-template: a file's path or the template itself."""
    if value is None:
        return None
    path = Path(value)
    if len(value) < 4096 and path.is_file():
        return path.read_text(encoding="utf-8")
    return value
