"""Single-stream decode of a Llama GGUF in llama.cpp's most used mix, Q4_K_M: pagedserve (super-blocks kept, decode
graphs) against llama.cpp's server on the same file, measured as benchmarks/gguf_single_stream.py measures the
bundled model.

No such model ships with this repository and none can be downloaded here, so the file is written by this script:
Llama 3.2 1B's shape (16 layers, hidden 2048, 32 query / 8 KV heads of 64, SiLU MLP of width 8192), random
super-blocks typed as llama.cpp's Q4_K_M stores them (Q4_K, with attn_v and ffn_down in Q6_K on the layers
llama.cpp's `use_more_bits` picks, the untied output Q6_K, norms F32; `--tied`: no output matrix, the embedding in
Q6_K is the LM head, as in Llama 3.2 1B), and the bundled SmolLM2's tokenizer and chat
template: 49 152 tokens where Llama 3 has 128 256. Decode speed does not depend on what the weights say.

    .venv/bin/python benchmarks/q4km_single_stream.py [--rounds 3] [--output-len 128] [--baseline-src DIR]
        [--concurrency N] [--tied]

`--baseline-src` adds pagedserve from another checkout's `src` (e.g. `git worktree add /tmp/old <rev>`), run in
the same rounds: a before / after on the same machine. `--concurrency N` runs N streams at once (llama.cpp with N
slots) and reports the output tok/s of all of them: batched decode, where pagedserve multiplies 2-8 rows at a time.

The file is cached in .bench-cache/ (~0.7 GB). Servers run one at a time, rounds interleaved.
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

LAYERS, HIDDEN, HEADS, KV_HEADS, HEAD_DIM, WIDTH = 16, 2048, 32, 8, 64, 8192
Q4_K, Q6_K, F32 = (
    gguf.GGMLQuantizationType.Q4_K,
    gguf.GGMLQuantizationType.Q6_K,
    gguf.GGMLQuantizationType.F32,
)


def more_bits(layer: int, layers: int) -> bool:
    """llama.cpp's use_more_bits: the layers whose attn_v and ffn_down Q4_K_M stores in Q6_K."""
    return layer < layers // 8 or layer >= 7 * layers // 8 or (layer - layers // 8) % 3 == 2


def write_llama(path: Path, tied: bool) -> None:
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("llama-3.2-1b-shaped-random-q4_k_m" + ("-tied" if tied else ""))
    writer.add_block_count(LAYERS)
    writer.add_context_length(8192)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(WIDTH)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_dimension_count(HEAD_DIM)
    writer.add_rope_freq_base(500_000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_K_M)
    vocab = add_bundled_tokenizer(writer)

    add = random_tensor_writer(writer)

    # tied (as Llama 3.2 1B is), the embedding is the output matrix and llama.cpp gives it the output's Q6_K
    add("token_embd.weight", vocab, HIDDEN, kind=Q6_K if tied else Q4_K)
    add("output_norm.weight", HIDDEN, kind=F32)
    if not tied:
        add("output.weight", vocab, HIDDEN, kind=Q6_K)
    for layer in range(LAYERS):
        prefix, more = f"blk.{layer}", Q6_K if more_bits(layer, LAYERS) else Q4_K
        add(f"{prefix}.attn_norm.weight", HIDDEN, kind=F32)
        add(f"{prefix}.ffn_norm.weight", HIDDEN, kind=F32)
        add(f"{prefix}.attn_q.weight", HEADS * HEAD_DIM, HIDDEN, kind=Q4_K)
        add(f"{prefix}.attn_k.weight", KV_HEADS * HEAD_DIM, HIDDEN, kind=Q4_K)
        add(f"{prefix}.attn_v.weight", KV_HEADS * HEAD_DIM, HIDDEN, kind=more)
        add(f"{prefix}.attn_output.weight", HIDDEN, HEADS * HEAD_DIM, kind=Q4_K)
        add(f"{prefix}.ffn_gate.weight", WIDTH, HIDDEN, kind=Q4_K)
        add(f"{prefix}.ffn_up.weight", WIDTH, HIDDEN, kind=Q4_K)
        add(f"{prefix}.ffn_down.weight", HIDDEN, WIDTH, kind=more)
    write_out(writer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--baseline-src", type=Path, default=None, help="another checkout's src folder")
    parser.add_argument("--concurrency", type=int, default=1, help="streams at once")
    parser.add_argument(
        "--tied",
        action="store_true",
        help="no output matrix: the Q6_K embedding is the LM head",
    )
    args = parser.parse_args()
    name = "llama-1b-shaped-q4_k_m" + ("-tied" if args.tied else "")
    path = cached_model(f"{name}.gguf", lambda out: write_llama(out, args.tied))

    def pagedserve(port: int, *flags: str):
        return pagedserve_spec(
            sys.executable, port, "--model", str(path), "--quantization", "gguf", "--max-model-len", "1024", *flags,
            dtype="auto",
        )  # fmt: skip

    systems = {"pagedserve (Q4_K_M super-blocks kept, decode graphs)": pagedserve}
    if args.baseline_src is not None:

        def baseline(port: int):
            spec = pagedserve(port)
            spec.env["PYTHONPATH"] = str(args.baseline_src.resolve())
            return spec

        systems[f"pagedserve from {args.baseline_src}"] = baseline
    systems["llama.cpp"] = lambda port: llamacpp_spec(path, port, slots=args.concurrency)
    what = "Llama 3.2 1B's shape in Q4_K_M" + (" (tied)" if args.tied else "") + ", SmolLM2's vocabulary"
    compare(systems, args.rounds, args.output_len, f"{what}, {args.concurrency} streams", args.concurrency)


if __name__ == "__main__":
    main()
