"""What a model's config implies for the engine: the longest max_model_len it takes (positions, sliding windows) and
what a pooling model answers and how it pools."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from pagedserve import envs
from pagedserve.config import CacheConfig, SchedulerConfig
from pagedserve.layers.rope_scaling import scaled_context
from pagedserve.models.bert import position_offset
from pagedserve.models.hf_folder import sentence_transformers_pooling
from pagedserve.models.llama import rope_settings, smallest_attention_window

logger = logging.getLogger("pagedserve")


def pooling_task(hf_config: Any, classifier: bool) -> str:
    """What a pooling model answers: embed, score (one label) or classify (several)."""
    if not classifier:
        return "embed"
    return "score" if int(getattr(hf_config, "num_labels", 1)) == 1 else "classify"


def classifier_labels(hf_config: Any) -> list[str]:
    """A sequence classifier's label names by index (config.json's id2label; LABEL_i where it names none)."""
    names = getattr(hf_config, "id2label", None) or {}
    return [str(names.get(i, names.get(str(i), f"LABEL_{i}"))) for i in range(int(hf_config.num_labels))]


def pooling_rule(path: Any, is_encoder: bool) -> str:
    """How embeddings pool: the folder's sentence-transformers Pooling module, else vLLM's default (CLS for
    encoders, LAST for causal models)."""
    return sentence_transformers_pooling(path) or ("CLS" if is_encoder else "LAST")


def pooling_settings(
    runner_kind: str, classifier: bool, is_encoder: bool, path: Any, sc: SchedulerConfig, cc: CacheConfig
) -> tuple[str, SchedulerConfig, CacheConfig]:
    """The runner's pooling type (LAST where it does not pool) and the scheduler and cache configs it runs with."""
    pooling_type = "LAST"
    if runner_kind == "pooling":  # an encoder's head reads the CLS row, a decoder's the last token's
        if classifier:
            pooling_type = "CLS" if is_encoder else "LAST"
        else:
            pooling_type = pooling_rule(path, is_encoder)
        whole = is_encoder or pooling_type != "LAST"
        if whole and (sc.enable_chunked_prefill or cc.enable_prefix_caching):
            # CLS and MEAN pool every row of a prompt, and an encoder's rows depend on the whole prompt: each
            # prompt runs whole in one step, never from cached blocks (vLLM's rule for such models).
            logger.info("%s pooling: chunked prefill and prefix caching off", pooling_type)
            sc = dataclasses.replace(sc, enable_chunked_prefill=False)
            cc = dataclasses.replace(cc, enable_prefix_caching=False)
    return pooling_type, sc, cc


def sliding_window_limit(hf_config: Any, disable_sliding_window: bool) -> int:
    """The longest max_model_len the model takes without VLLM_ALLOW_LONG_MAX_MODEL_LEN: its
    max_position_embeddings (YaRN's original context times its factor), capped at its smallest window with --disable-sliding-window (vLLM's rule). Qwen's
    use_sliding_window runs only that way: its per-layer rule differs between Qwen2, Qwen2-MoE and Qwen3-MoE."""
    # RoBERTa's positions start at pad_token_id + 1 in its table (XLM-R: 514 rows, 512 tokens).
    # YaRN and linear scaling extend the context past max_position_embeddings (vLLM derives the same length).
    max_positions = scaled_context(
        rope_settings(hf_config)[1], int(getattr(hf_config, "max_position_embeddings", 2048))
    )
    max_positions -= position_offset(hf_config)
    window = smallest_attention_window(hf_config)
    if getattr(hf_config, "use_sliding_window", False) and window and not disable_sliding_window:
        raise ValueError(
            "use_sliding_window (Qwen's sliding-window attention) is not supported; --disable-sliding-window "
            f"serves the model with full attention and max_model_len capped at the window ({window})"
        )
    return min(max_positions, window) if disable_sliding_window and window else max_positions


def resolve_max_model_len(hf_config: Any, requested: int | None, disable_sliding_window: bool) -> int:
    """--max-model-len (`requested`), by default the longest the model takes (sliding_window_limit); past that only
    with VLLM_ALLOW_LONG_MAX_MODEL_LEN."""
    max_positions = sliding_window_limit(hf_config, disable_sliding_window)
    max_model_len = requested or max_positions
    if max_model_len > max_positions and max_model_len >= 1 and envs.allow_long_max_model_len():
        logger.warning(
            "max_model_len %d is past the model's max_position_embeddings %d (VLLM_ALLOW_LONG_MAX_MODEL_LEN): "
            "positions the model was not trained on may give degraded or wrong output", max_model_len,
            max_positions,
        )  # fmt: skip
    elif max_model_len < 1 or max_model_len > max_positions:
        raise ValueError(
            f"max_model_len must be in [1, {max_positions}] for this model"
            f"{' with --disable-sliding-window' if disable_sliding_window else ''}, got {max_model_len} "
            "(VLLM_ALLOW_LONG_MAX_MODEL_LEN=1 accepts more)"
        )
    return max_model_len
