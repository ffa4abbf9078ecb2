"""The offline `LLM` class with vLLM's keyword arguments and output shapes."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from pagedserve.config import (
    CacheConfig,
    EngineConfig,
    LoRAConfig,
    ParallelConfig,
    SchedulerConfig,
    SpeculativeConfig,
    StructuredOutputsConfig,
)
from pagedserve.config_fields import config_fields
from pagedserve.engine.chat import CONTENT_FORMATS, ChatOptions
from pagedserve.engine.llm_engine import LLMEngine
from pagedserve.engine.pooling_requests import cosine_scores, encode_pairs, pooling_request, text_pairs
from pagedserve.engine.prompts import PromptInput
from pagedserve.errors import InvalidRequestError
from pagedserve.lora.request import LoRARequest
from pagedserve.model_config import ModelConfig
from pagedserve.outputs import (
    ClassificationOutput,
    ClassificationRequestOutput,
    EmbeddingOutput,
    EmbeddingRequestOutput,
    RequestOutput,
    ScoringOutput,
    ScoringRequestOutput,
)
from pagedserve.pooling_params import PoolingParams
from pagedserve.sampling_params import SamplingParams

_SECTIONS = (ModelConfig, CacheConfig, SchedulerConfig, ParallelConfig, LoRAConfig)


def build_engine_config(**kwargs: Any) -> EngineConfig:
    """Route vLLM-style keyword arguments to the config dataclasses; unknown ones raise TypeError."""
    structured = kwargs.pop("structured_outputs_config", None)
    if isinstance(structured, dict):
        structured = StructuredOutputsConfig(**structured)
    if structured is not None and not isinstance(structured, StructuredOutputsConfig):
        raise TypeError("structured_outputs_config must be a dict or a StructuredOutputsConfig")
    speculative = kwargs.pop("speculative_config", None)
    if isinstance(speculative, dict):
        speculative = SpeculativeConfig.from_dict(speculative)
    if speculative is not None and not isinstance(speculative, SpeculativeConfig):
        raise TypeError("speculative_config must be a dict or a SpeculativeConfig")
    values: dict[type, dict[str, Any]] = {cls: {} for cls in _SECTIONS}
    names = {f.name: cls for cls in _SECTIONS for f in config_fields(cls)}
    for key, value in kwargs.items():
        if key not in names:
            raise TypeError(f"LLM() got an unexpected keyword argument {key!r}")
        values[names[key]][key] = value
    config = EngineConfig(
        model=ModelConfig(**values[ModelConfig]),
        cache=CacheConfig(**values[CacheConfig]),
        scheduler=SchedulerConfig(**values[SchedulerConfig]),
        parallel=ParallelConfig(**values[ParallelConfig]),
        lora=LoRAConfig(**values[LoRAConfig]),
        structured_outputs=structured or StructuredOutputsConfig(),
        speculative=speculative,
    )
    config.validate()
    return config


class LLM:
    """`LLM(model=None, dtype=..., max_model_len=..., ...)`: None serves the bundled SmolLM2-135M-Instruct."""

    def __init__(self, model: str | None = None, **kwargs: Any) -> None:
        self.llm_engine = LLMEngine(build_engine_config(model=model, **kwargs), stream_outputs=False)
        self._counter = itertools.count()

    def get_default_sampling_params(self) -> SamplingParams:
        """SamplingParams with the model's generation defaults (--generation-config), as vLLM's LLM."""
        return SamplingParams(**self.llm_engine.info.default_sampling_params)

    def get_tokenizer(self) -> Any:
        return self.llm_engine.tokenizer

    def generate(
        self,
        prompts: PromptInput | Sequence[PromptInput],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
        priority: Sequence[int] | None = None,
        lora_request: LoRARequest | Sequence[LoRARequest | None] | None = None,
    ) -> list[RequestOutput]:
        """vLLM's: `priority` (one per prompt, lower first) counts with scheduling_policy="priority";
        `lora_request` (one for all prompts, or one per prompt) runs them with a LoRA adapter (enable_lora=True)."""
        if isinstance(prompts, (str, dict)) or (
            isinstance(prompts, list) and prompts and isinstance(prompts[0], int)
        ):
            prompts = [prompts]  # type: ignore[list-item]
        prompts = list(prompts)  # type: ignore[arg-type]
        params_list = self._params_for(sampling_params, len(prompts))
        priorities = list(priority) if priority is not None else [0] * len(prompts)
        if len(priorities) != len(prompts):
            raise ValueError(
                f"priority must hold one value per prompt ({len(prompts)}), got {len(priorities)}"
            )
        if lora_request is None or isinstance(lora_request, LoRARequest):
            loras = [lora_request] * len(prompts)
        else:
            loras = list(lora_request)
            if len(loras) != len(prompts):
                raise ValueError(
                    f"lora_request must hold one value per prompt ({len(prompts)}), got {len(loras)}"
                )
        ids = []
        for prompt, params, request_priority, lora in zip(prompts, params_list, priorities, loras):
            request_id = str(next(self._counter))
            self.llm_engine.add_request(
                request_id, prompt, params, priority=request_priority, lora_request=lora
            )
            ids.append(request_id)
        return self._run(ids, use_tqdm)

    def chat(
        self,
        messages: list[dict[str, Any]] | list[list[dict[str, Any]]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
        add_generation_prompt: bool = True,
        chat_template: str | None = None,
        continue_final_message: bool = False,
        chat_template_kwargs: dict[str, Any] | None = None,
        tools: list[dict[str, Any]] | None = None,
        lora_request: LoRARequest | None = None,
        chat_template_content_format: str = "auto",
    ) -> list[RequestOutput]:
        """vLLM's: chat_template_content_format auto, string or openai (how content parts reach the template)."""
        if chat_template_content_format not in CONTENT_FORMATS:
            raise ValueError(
                f"chat_template_content_format must be one of {', '.join(CONTENT_FORMATS)}, got "
                f"{chat_template_content_format!r}"
            )
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        options = ChatOptions(
            add_generation_prompt, continue_final_message, chat_template_kwargs, tools,
            content_format=chat_template_content_format,
        )  # fmt: skip
        prompts = [
            {"prompt_token_ids": self.llm_engine.apply_chat_template(c, options, chat_template)}
            for c in conversations
        ]
        return self.generate(prompts, sampling_params, use_tqdm, lora_request=lora_request)  # type: ignore[arg-type]

    def embed(
        self,
        prompts: PromptInput | Sequence[PromptInput],
        pooling_params: PoolingParams | None = None,
        use_tqdm: bool = True,
        lora_request: LoRARequest | Sequence[LoRARequest | None] | None = None,
        truncate_prompt_tokens: int | None = None,
    ) -> list[EmbeddingRequestOutput]:
        """vLLM's: one embedding per prompt (runner="pooling"): the last position's final hidden state."""
        params = pooling_request(pooling_params or PoolingParams(), truncate_prompt_tokens)
        outputs = self.generate(prompts, params, use_tqdm, lora_request=lora_request)
        return [
            EmbeddingRequestOutput(
                o.request_id, EmbeddingOutput(o.outputs[0].embedding or []), o.prompt_token_ids, o.finished
            )
            for o in outputs
        ]

    def classify(
        self,
        prompts: PromptInput | Sequence[PromptInput],
        use_tqdm: bool = True,
        truncate_prompt_tokens: int | None = None,
        lora_request: LoRARequest | Sequence[LoRARequest | None] | None = None,
    ) -> list[ClassificationRequestOutput]:
        """vLLM's: each prompt's probabilities over a sequence classifier's labels (softmax; a sigmoid for one
        label). The label names are `llm.llm_engine.info.labels`."""
        if self.llm_engine.info.pooling_task not in ("score", "classify"):
            raise InvalidRequestError("LLM.classify needs a sequence-classification model")
        params = pooling_request(PoolingParams(normalize=False), truncate_prompt_tokens)
        outputs = self.generate(prompts, params, use_tqdm, lora_request=lora_request)
        return [
            ClassificationRequestOutput(
                o.request_id,
                ClassificationOutput(o.outputs[0].embedding or []),
                o.prompt_token_ids,
                o.finished,
            )
            for o in outputs
        ]

    def score(
        self,
        data_1: str | list[str],
        data_2: str | list[str],
        use_tqdm: bool = True,
        truncate_prompt_tokens: int | None = None,
        lora_request: LoRARequest | None = None,
    ) -> list[ScoringRequestOutput]:
        """vLLM's: one score per (data_1, data_2) pair (one data_1 against every data_2, or paired in order). A
        cross-encoder's head through a sigmoid; on an embedding model, the cosine similarity of the two embeddings."""
        info = self.llm_engine.info
        if info.pooling_task not in ("embed", "score"):
            raise InvalidRequestError(
                "LLM.score needs an embedding model or a one-label classifier served for pooling (runner='pooling')"
            )
        pairs = text_pairs(data_1, data_2)
        if info.pooling_task == "score":
            ids, starts = encode_pairs(self.get_tokenizer(), pairs, truncate_prompt_tokens)
            prompts: list[Any] = [{"prompt_token_ids": t} for t in ids]
            outputs = self.generate(
                prompts,
                [pooling_request(PoolingParams(normalize=False, token_type_start=s)) for s in starts],
                use_tqdm,
                lora_request=lora_request,
            )
            scores = [(o.outputs[0].embedding or [0.0])[0] for o in outputs]
            token_ids = [o.prompt_token_ids for o in outputs]
        else:
            texts = list(dict.fromkeys(text for pair in pairs for text in pair))
            outputs = self.generate(
                texts,
                pooling_request(PoolingParams(), truncate_prompt_tokens),
                use_tqdm,
                lora_request=lora_request,
            )
            scores = cosine_scores(pairs, {t: o.outputs[0].embedding or [] for t, o in zip(texts, outputs)})
            by_text = {t: o.prompt_token_ids for t, o in zip(texts, outputs)}
            token_ids = [by_text[x] + by_text[y] for x, y in pairs]
        return [
            ScoringRequestOutput(str(i), ScoringOutput(score), ids_)
            for i, (score, ids_) in enumerate(zip(scores, token_ids))
        ]

    def _params_for(self, sampling_params: Any, count: int) -> list[SamplingParams]:
        if sampling_params is None:
            return [self.get_default_sampling_params() for _ in range(count)]
        if isinstance(sampling_params, SamplingParams):
            return [sampling_params] * count
        params = list(sampling_params)
        if len(params) != count:
            raise ValueError(f"sampling_params has {len(params)} entries for {count} prompts")
        return params

    def _run(self, request_ids: list[str], use_tqdm: bool) -> list[RequestOutput]:
        from tqdm import tqdm

        engine = self.llm_engine
        pending = set(request_ids)
        results: dict[str, RequestOutput] = {}
        bar = tqdm(total=len(request_ids), desc="Processed prompts", disable=not use_tqdm, dynamic_ncols=True)
        try:
            while pending:
                for output in engine.step():
                    if output.finished and output.request_id in pending:
                        pending.discard(output.request_id)
                        results[output.request_id] = output
                        bar.update(1)
        except BaseException:
            engine.abort_request(list(pending))
            raise
        finally:
            bar.close()
        return [results[i] for i in request_ids]
