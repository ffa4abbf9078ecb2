"""Tiny random-weight Hugging Face checkpoints with the bundled model's tokenizer, written as transformers writes them
(tests that serve a real folder: embeddings, Hub-cache layouts)."""

from __future__ import annotations

import pathlib
from typing import Any

import torch
import transformers


def bundled_tokenizer() -> Any:
    from pagedserve.models.bundled import bundled_model_path

    path = bundled_model_path()
    return transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def write_tiny_qwen(folder: pathlib.Path, version: int = 3, max_positions: int = 2048, seed: int = 0) -> Any:
    """A 2-layer Qwen2 or Qwen3 (its own head size, q/k norms) with tied embeddings; returns the float32 model."""
    tokenizer = bundled_tokenizer()
    common = dict(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
        tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
    )  # fmt: skip
    if version == 3:
        config = transformers.Qwen3Config(**common, head_dim=32)
        config.architectures = ["Qwen3ForCausalLM"]
    else:
        config = transformers.Qwen2Config(**common)
        config.architectures = ["Qwen2ForCausalLM"]
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


def write_tiny_moe(folder: pathlib.Path, kind: str) -> Any:
    """A 2-layer Mixtral (4 experts, top 2) or Qwen3-MoE (6 experts of width 40, top 2, renormalized) with tied
    embeddings, in transformers' Hub layout (each expert's matrices apart); returns the float32 model."""
    tokenizer = bundled_tokenizer()
    common = dict(
        vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True, initializer_range=0.1,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
    )  # fmt: skip
    if kind == "mixtral":
        config = transformers.MixtralConfig(
            **common, intermediate_size=48, num_local_experts=4, num_experts_per_tok=2
        )
    else:  # 6 experts of width 40: at TP=2 each rank keeps 20 rows of every expert
        config = transformers.Qwen3MoeConfig(
            **common, head_dim=32, intermediate_size=96, moe_intermediate_size=40, num_experts=6,
            num_experts_per_tok=2, norm_topk_prob=True,
        )  # fmt: skip
    torch.manual_seed(5)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


def tiny_gemma3_text_config(vocab_size: int, **overrides: Any) -> Any:
    """Gemma 3's text config at toy size: local (sliding, window 6) and global layers with their own rope (linear
    scaling on the global ones, as 4B+), a query_pre_attn_scalar that is not the head size, weights at 10x
    transformers' default spread so every part moves the logits."""
    settings = dict(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, query_pre_attn_scalar=24, sliding_window=6,
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "sliding_attention"],
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1000000.0},
        },
        max_position_embeddings=256, initializer_range=0.2, rms_norm_eps=1e-6,
    )  # fmt: skip
    settings.update(overrides)
    return transformers.Gemma3TextConfig(**settings)


def randomize_gemma_norms(model: Any, seed: int) -> None:
    """Gemma's norms multiply by 1 + weight and start at zero: random weights make every norm count."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(torch.rand(param.shape, generator=gen) - 0.5)


def write_tiny_gemma3(folder: pathlib.Path, multimodal: bool = False, seed: int = 0) -> Any:
    """A 4-layer Gemma 3 with the bundled tokenizer: Gemma3ForCausalLM, or with `multimodal` a
    Gemma3ForConditionalGeneration (a 1-layer SigLIP tower) as the 4B-27B checkpoints; returns the float32 model."""
    tokenizer = bundled_tokenizer()
    ids = dict(eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id, pad_token_id=0)
    text = tiny_gemma3_text_config(len(tokenizer), **ids)
    if multimodal:
        vision = transformers.SiglipVisionConfig(
            hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28,
            patch_size=14,
        )  # fmt: skip
        config = transformers.Gemma3Config(
            text_config=text, vision_config=vision, mm_tokens_per_image=4, image_token_index=len(tokenizer) - 1,
            **ids,
        )  # fmt: skip
        config.architectures = ["Gemma3ForConditionalGeneration"]
        model_class = transformers.Gemma3ForConditionalGeneration
    else:
        config = text
        config.architectures = ["Gemma3ForCausalLM"]
        model_class = transformers.Gemma3ForCausalLM
    torch.manual_seed(seed)
    model = model_class(config).to(torch.float32).eval()
    randomize_gemma_norms(model, seed)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


def write_tiny_gemma2(folder: pathlib.Path, seed: int = 0) -> Any:
    """A 4-layer Gemma 2 with the bundled tokenizer: sliding (window 6) and global layers alternating, soft-caps
    small enough to bend its scores (attention 2, logits 3; the real ones are 50 and 30 for weights of real scale),
    a query_pre_attn_scalar that is not the head size; returns the float32 model."""
    tokenizer = bundled_tokenizer()
    config = transformers.Gemma2Config(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=96, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, query_pre_attn_scalar=24, sliding_window=6,
        attn_logit_softcapping=2.0, final_logit_softcapping=3.0, max_position_embeddings=256,
        initializer_range=0.2, rms_norm_eps=1e-6, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id, pad_token_id=0,
    )  # fmt: skip
    config.architectures = ["Gemma2ForCausalLM"]
    torch.manual_seed(seed)
    model = transformers.Gemma2ForCausalLM(config).to(torch.float32).eval()
    randomize_gemma_norms(model, seed)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


ENCODER_WORDS = [f"w{i}" for i in range(59)]


def write_tiny_encoder(
    folder: pathlib.Path,
    kind: str = "bert",
    pooling: str | None = None,
    seed: int = 0,
    cross_encoder: bool = False,
    labels: list[str] | None = None,
) -> Any:
    """A 2-layer BertModel or XLMRobertaModel (RoBERTa's positions from pad_token_id + 1) with a word-level
    tokenizer that wraps each text as `[CLS] ... [SEP]`, saved as sentence-transformers saves one when `pooling`
    ("cls_token", "mean_tokens", "lasttoken") is given; with `cross_encoder`, the ...ForSequenceClassification of
    one label, whose tokenizer joins a pair as BERT's (`[CLS] a [SEP] b [SEP]`, b's token types 1) or XLM-R's
    (`<s> a </s></s> b </s>`, no token types) do; `labels` names a classifier's labels (one by default). Returns
    the float32 transformers model."""
    import json

    import tokenizers

    specials = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]
    if kind == "xlm-roberta":  # fairseq's order: <s> 0, <pad> 1, </s> 2, <unk> 3
        specials = ["[CLS]", "[PAD]", "[SEP]", "[UNK]", "[MASK]"]
    vocab = {token: i for i, token in enumerate(specials + ENCODER_WORDS)}
    words = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    words.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    pair = "[CLS] $A [SEP] [SEP] $B [SEP]" if kind == "xlm-roberta" else "[CLS] $A [SEP] $B:1 [SEP]:1"
    words.post_processor = tokenizers.processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair=pair,
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    names = (
        ["input_ids", "attention_mask"]
        if kind == "xlm-roberta"
        else ["input_ids", "token_type_ids", "attention_mask"]
    )
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=words, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_input_names=names,
    )  # fmt: skip
    common = dict(
        vocab_size=len(vocab), hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
        pad_token_id=vocab["[PAD]"], layer_norm_eps=1e-12,
    )  # fmt: skip
    torch.manual_seed(seed)
    if cross_encoder:  # a wider init than transformers' 0.02, so that scores spread away from sigmoid(0)
        labels = labels or ["LABEL_0"]
        common |= {"id2label": dict(enumerate(labels)), "initializer_range": 0.3}
    if kind == "xlm-roberta":
        config = transformers.XLMRobertaConfig(**common, max_position_embeddings=66, type_vocab_size=1)
        classes = (transformers.XLMRobertaModel, transformers.XLMRobertaForSequenceClassification)
    else:
        config = transformers.BertConfig(**common, max_position_embeddings=64)
        classes = (transformers.BertModel, transformers.BertForSequenceClassification)
    model = classes[cross_encoder](config)
    model = model.to(torch.float32).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if pooling is not None:
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ]
        (folder / "modules.json").write_text(json.dumps(modules))
        (folder / "1_Pooling").mkdir()
        config = {"word_embedding_dimension": 64, f"pooling_mode_{pooling}": True}
        (folder / "1_Pooling" / "config.json").write_text(json.dumps(config))
    return model
