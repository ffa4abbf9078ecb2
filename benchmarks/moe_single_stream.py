"""Single-stream decode of a mixture-of-experts GGUF: pagedserve (experts kept in their Q4_0 blocks) against
llama.cpp's server on the same file, measured as benchmarks/gguf_single_stream.py measures the bundled model.

No MoE model ships with this repository and none can be downloaded here, so the file is written by this script:
Qwen3-30B-A3B's layer shape (hidden 2048, 32 query / 4 KV heads of 128, q/k norms, 128 experts of width 768, top 8)
with `--layers` of its 48 layers, random weights (normal, std 0.02) stored as llama.cpp's converter stores a
qwen3moe file (matrices Q4_0, router and norms F32), and the bundled SmolLM2's tokenizer and chat template. Decode
speed does not depend on what the weights say; the per-layer cost is the real model's, so a full 48-layer model
decodes at about `--layers` / 48 of the rate measured (plus the LM head's share).

    .venv/bin/python benchmarks/moe_single_stream.py [--layers 4] [--rounds 3] [--output-len 64]

The file is cached in .bench-cache/ (about 0.35 GB a layer). Servers run one at a time, rounds interleaved.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import gguf

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peers.servers import llamacpp_spec, pagedserve_spec  # noqa: E402
from random_gguf import (  # noqa: E402
    add_bundled_tokenizer,
    cached_model,
    compare,
    random_tensor_writer,
    write_out,
)

HIDDEN, HEADS, KV_HEADS, HEAD_DIM = 2048, 32, 4, 128
EXPERTS, TOP_K, EXPERT_WIDTH, DENSE_WIDTH = 128, 8, 768, 6144
Q4_0, F32 = gguf.GGMLQuantizationType.Q4_0, gguf.GGMLQuantizationType.F32


def write_model(path: Path, layers: int) -> None:
    writer = gguf.GGUFWriter(str(path), "qwen3moe")
    writer.add_name("qwen3moe-30b-a3b-shaped-random")
    writer.add_block_count(layers)
    writer.add_context_length(4096)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(DENSE_WIDTH)
    writer.add_expert_feed_forward_length(EXPERT_WIDTH)
    writer.add_expert_count(EXPERTS)
    writer.add_expert_used_count(TOP_K)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_key_length(HEAD_DIM)
    writer.add_value_length(HEAD_DIM)
    writer.add_rope_freq_base(1_000_000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    vocab = add_bundled_tokenizer(writer)

    add = random_tensor_writer(writer)

    add("token_embd.weight", vocab, HIDDEN)
    add("output_norm.weight", HIDDEN, kind=F32)
    add("output.weight", vocab, HIDDEN)
    for layer in range(layers):
        prefix = f"blk.{layer}"
        add(f"{prefix}.attn_norm.weight", HIDDEN, kind=F32)
        add(f"{prefix}.ffn_norm.weight", HIDDEN, kind=F32)
        add(f"{prefix}.attn_q.weight", HEADS * HEAD_DIM, HIDDEN)
        add(f"{prefix}.attn_k.weight", KV_HEADS * HEAD_DIM, HIDDEN)
        add(f"{prefix}.attn_v.weight", KV_HEADS * HEAD_DIM, HIDDEN)
        add(f"{prefix}.attn_output.weight", HIDDEN, HEADS * HEAD_DIM)
        add(f"{prefix}.attn_q_norm.weight", HEAD_DIM, kind=F32)
        add(f"{prefix}.attn_k_norm.weight", HEAD_DIM, kind=F32)
        add(f"{prefix}.ffn_gate_inp.weight", EXPERTS, HIDDEN, kind=F32)
        add(f"{prefix}.ffn_gate_exps.weight", EXPERTS, EXPERT_WIDTH, HIDDEN)
        add(f"{prefix}.ffn_up_exps.weight", EXPERTS, EXPERT_WIDTH, HIDDEN)
        add(f"{prefix}.ffn_down_exps.weight", EXPERTS, HIDDEN, EXPERT_WIDTH)
    write_out(writer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output-len", type=int, default=64)
    args = parser.parse_args()
    path = cached_model(
        f"qwen3moe-shaped-{args.layers}l-q4_0.gguf", lambda partial: write_model(partial, args.layers)
    )
    systems = {
        "pagedserve (Q4_0 experts kept)": lambda port: pagedserve_spec(
            sys.executable,
            port,
            "--model",
            str(path),
            "--quantization",
            "gguf",
            "--max-model-len",
            "1024",
            dtype="auto",
        ),
        "llama.cpp": lambda port: llamacpp_spec(path, port, slots=1),
    }
    compare(systems, args.rounds, args.output_len, f"{args.layers} of Qwen3-30B-A3B's 48 layers")


if __name__ == "__main__":
    main()
