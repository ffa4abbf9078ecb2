"""Single-stream decode of a Gemma 3 GGUF: pagedserve (matrices kept in their Q4_0 blocks, decode graphs) against
llama.cpp's server on the same file, measured as benchmarks/gguf_single_stream.py measures the bundled model.

No Gemma model ships with this repository and none can be downloaded here, so the file is written by this script:
Gemma 3 1B's shape (26 layers, hidden 1152, 4 query / 1 KV head of 256, q/k norms, GELU MLP of width 6912, five
local layers with a 512-token window for every global one) with random weights (normal, std 0.02), stored as
llama.cpp's converter stores a gemma3 file (matrices Q4_0, the tied embedding Q8_0, norms F32 as 1 + weight), and
the bundled SmolLM2's tokenizer and chat template: 49 152 tokens where Gemma has 262 144, so the LM head is ~5x
smaller than the real model's. Decode speed does not depend on what the weights say.

    .venv/bin/python benchmarks/gemma3_single_stream.py [--rounds 3] [--output-len 128]

The file is cached in .bench-cache/ (~0.5 GB). Servers run one at a time, rounds interleaved.
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

LAYERS, HIDDEN, HEADS, KV_HEADS, HEAD_DIM, WIDTH, WINDOW = 26, 1152, 4, 1, 256, 6912, 512
Q4_0, Q8_0, F32 = (
    gguf.GGMLQuantizationType.Q4_0,
    gguf.GGMLQuantizationType.Q8_0,
    gguf.GGMLQuantizationType.F32,
)


def write_gemma3(
    path: Path,
    name: str = "gemma-3-1b-shaped-random",
    layers: int = LAYERS,
    hidden: int = HIDDEN,
    heads: int = HEADS,
    head_dim: int = HEAD_DIM,
    width: int = WIDTH,
    window: int = WINDOW,
) -> None:
    """A gemma3 file of this shape (one KV head; llama.cpp's five local layers for each global one), random weights:
    matrices Q4_0, the tied embedding Q8_0, norms F32 as 1 + weight, the bundled tokenizer."""
    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_name(name)
    writer.add_block_count(layers)
    writer.add_context_length(32768)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(width)
    writer.add_head_count(heads)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_freq_base(1_000_000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_sliding_window(window)
    vocab = add_bundled_tokenizer(writer)

    add = random_tensor_writer(writer)

    add("token_embd.weight", vocab, hidden, kind=Q8_0)
    add("output_norm.weight", hidden, kind=F32)
    for layer in range(layers):
        prefix = f"blk.{layer}"
        for norm in ("attn_norm", "post_attention_norm", "ffn_norm", "post_ffw_norm"):
            add(f"{prefix}.{norm}.weight", hidden, kind=F32)
        add(f"{prefix}.attn_q_norm.weight", head_dim, kind=F32)
        add(f"{prefix}.attn_k_norm.weight", head_dim, kind=F32)
        add(f"{prefix}.attn_q.weight", heads * head_dim, hidden)
        add(f"{prefix}.attn_k.weight", KV_HEADS * head_dim, hidden)
        add(f"{prefix}.attn_v.weight", KV_HEADS * head_dim, hidden)
        add(f"{prefix}.attn_output.weight", hidden, heads * head_dim)
        add(f"{prefix}.ffn_gate.weight", width, hidden)
        add(f"{prefix}.ffn_up.weight", width, hidden)
        add(f"{prefix}.ffn_down.weight", hidden, width)
    write_out(writer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output-len", type=int, default=128)
    args = parser.parse_args()
    path = cached_model("gemma3-1b-shaped-q4_0.gguf", write_gemma3)

    def pagedserve(port: int, *flags: str):
        return pagedserve_spec(
            sys.executable, port, "--model", str(path), "--quantization", "gguf", "--max-model-len", "1024", *flags,
            dtype="auto",
        )  # fmt: skip

    systems = {
        "pagedserve (Q4_0 blocks kept, decode graphs)": pagedserve,
        "pagedserve --enforce-eager": lambda port: pagedserve(port, "--enforce-eager"),
        "llama.cpp": lambda port: llamacpp_spec(path, port, slots=1),
    }
    compare(systems, args.rounds, args.output_len, "Gemma 3 1B's shape, SmolLM2's vocabulary")


if __name__ == "__main__":
    main()
