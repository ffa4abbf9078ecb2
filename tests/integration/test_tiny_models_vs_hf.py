"""Tiny random-weight Llama, Qwen2 and Qwen3 models: our paged forward equals transformers' logits (float32, 1e-4).

Covers a whole-prompt prefill, a prefill split into chunks (the second chunk reads the paged cache), and decode
steps, with both attention backends (the plain reference oracle and the fast CPU one).
"""

from __future__ import annotations

import pytest
import torch
import transformers

from pagedserve.attention.backend import get_attention_backend
from pagedserve.core.scheduler_output import ScheduledSequence
from pagedserve.models.registry import resolve_model_class
from pagedserve.worker.inputs import prepare_inputs
from pagedserve.worker.kv_cache import allocate_kv_caches

BLOCK = 4


def tiny_config(arch: str) -> transformers.PretrainedConfig:
    common = dict(
        vocab_size=97, hidden_size=64, intermediate_size=112, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5,
    )  # fmt: skip
    if arch == "llama":
        config = transformers.LlamaConfig(
            **common,
            rope_theta=5000.0,
            tie_word_embeddings=False,
            rope_scaling={
                "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 32,
            },
        )  # fmt: skip
        config.architectures = ["LlamaForCausalLM"]
    elif arch == "qwen2":
        config = transformers.Qwen2Config(**common, rope_theta=1e6, tie_word_embeddings=True)
        config.architectures = ["Qwen2ForCausalLM"]
    else:  # Qwen3: q/k norms, and a head_dim of its own (32, not hidden / heads = 16), as Qwen3's 128
        config = transformers.Qwen3Config(**common, head_dim=32, rope_theta=1e6, tie_word_embeddings=False)
        config.architectures = ["Qwen3ForCausalLM"]
    return config


def build_pair(arch: str, backend: str):
    torch.manual_seed(0)
    config = tiny_config(arch)
    reference = transformers.AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32).eval()
    with torch.no_grad():  # random biases and q/k norms too (zeros and ones when initialised)
        for name, param in reference.named_parameters():
            if "bias" in name:
                param.normal_(0, 0.1)
            if "q_norm" in name or "k_norm" in name:
                param.uniform_(0.5, 1.5)
    ours = resolve_model_class(config)(config, get_attention_backend(backend)).float().eval()
    ours.load_weights(reference.state_dict().items())
    return config, reference, ours


def run_chunks(ours, config, tokens: list[int], chunks: list[int], caches) -> list[torch.Tensor]:
    """Feed `tokens` in chunks of the given sizes; return the logits of every chunk's tokens."""
    blocks = list(range(-(-len(tokens) // BLOCK)))
    outputs = []
    start = 0
    for size in chunks:
        seq = ScheduledSequence("r", start, tokens[start : start + size], blocks, samples=False)
        step = prepare_inputs([seq], BLOCK, torch.device("cpu"))
        with torch.no_grad():
            hidden = ours(step.input_ids, step.positions, caches, step.metadata)
            outputs.append(ours.compute_logits(hidden))
        start += size
    return outputs


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("backend", ["torch_ref", "cpu", "cpu_torch"])
@pytest.mark.parametrize("chunks", [[13], [5, 6, 2], [12, 1]])
def test_logits_match_transformers(arch: str, backend: str, chunks: list[int]) -> None:
    config, reference, ours = build_pair(arch, backend)
    tokens = torch.randint(
        0, config.vocab_size, (sum(chunks),), generator=torch.Generator().manual_seed(1)
    ).tolist()
    caches = allocate_kv_caches(config, 8, BLOCK, torch.float32, torch.device("cpu"))
    got = torch.cat(run_chunks(ours, config, tokens, chunks, caches))
    with torch.no_grad():
        expected = reference(torch.tensor([tokens])).logits[0]
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("backend", ["torch_ref", "cpu", "cpu_torch"])
def test_batched_decode_of_different_lengths(backend: str) -> None:
    config, reference, ours = build_pair("llama", backend)
    gen = torch.Generator().manual_seed(2)
    prompts = [torch.randint(0, config.vocab_size, (n,), generator=gen).tolist() for n in (3, 9, 17)]
    caches = allocate_kv_caches(config, 16, BLOCK, torch.float32, torch.device("cpu"))
    tables, next_block = [], 0
    for prompt in prompts:
        n_blocks = -(-(len(prompt) + 1) // BLOCK)
        tables.append(list(range(next_block, next_block + n_blocks)))
        next_block += n_blocks
    # Prefill each prompt, then decode the appended token for all three in one batch.
    prefill = [ScheduledSequence(f"r{i}", 0, p, t, True) for i, (p, t) in enumerate(zip(prompts, tables))]
    step = prepare_inputs(prefill, BLOCK, torch.device("cpu"))
    with torch.no_grad():
        ours(step.input_ids, step.positions, caches, step.metadata)
    decode = [
        ScheduledSequence(f"r{i}", len(p), [5], t, True) for i, (p, t) in enumerate(zip(prompts, tables))
    ]
    step = prepare_inputs(decode, BLOCK, torch.device("cpu"))
    with torch.no_grad():
        logits = ours.compute_logits(ours(step.input_ids, step.positions, caches, step.metadata))
        for row, prompt in enumerate(prompts):
            expected = reference(torch.tensor([prompt + [5]])).logits[0, -1]
            torch.testing.assert_close(logits[row], expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_bfloat16_weights_under_float32_compute(arch: str) -> None:
    """dtype auto on CPUs without bfloat16 instructions: matrices stored in bfloat16, everything computed in
    float32. Equals transformers in float32 on the same bf16-rounded weights (widening is exact)."""
    from pagedserve.worker.dtypes import cast_matrix_weights

    config, reference, ours = build_pair(arch, "cpu")
    with torch.no_grad():
        for param in reference.parameters():
            if param.dim() == 2:
                param.copy_(param.bfloat16().float())
    ours.load_weights(reference.state_dict().items())
    cast_matrix_weights(ours, torch.bfloat16)
    assert ours.lm_head.weight.dtype == torch.bfloat16 and ours.model.norm.weight.dtype == torch.float32
    tokens = torch.randint(0, config.vocab_size, (13,), generator=torch.Generator().manual_seed(4)).tolist()
    caches = allocate_kv_caches(config, 8, BLOCK, torch.float32, torch.device("cpu"))
    got = torch.cat(run_chunks(ours, config, tokens, [5, 8], caches))
    with torch.no_grad():
        expected = reference(torch.tensor([tokens])).logits[0]
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
