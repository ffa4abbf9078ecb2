"""The hybrid KV cache manager on a Gemma 3-shaped GGUF: the same batch of long requests in the same KV budget, with
window layers freeing their blocks (the default) and with every block kept (--disable-hybrid-kv-cache-manager),
offline, one engine at a time.

The file is written here (cached in .bench-cache/): Gemma 3's layout scaled down so that prefill is fast on two
cores: 24 layers, five local (a 256-token window) for each global one, hidden 512, 4 query heads and 1 KV head of
128, GELU MLP of 2048, matrices Q4_0, random weights, the bundled SmolLM2 tokenizer. What is measured depends on the
cache's arithmetic (blocks a sequence holds), not on the weights' values.

    .venv/bin/python benchmarks/hybrid_kv_cache.py [--requests 8] [--prompt-len 1500] [--output-len 256]
        [--kv-mib 64] [--rounds 2]

Prints, per system: the engine's maximum concurrency at max_model_len, the preemptions, the largest number of
sequences decoding at once, wall time and output tokens/s. Random token ids (no prompt text), greedy, ignore_eos.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gguf  # noqa: E402
from random_gguf import add_bundled_tokenizer, cached_model, random_tensor_writer  # noqa: E402

from pagedserve import LLM, SamplingParams  # noqa: E402

LAYERS, HIDDEN, HEADS, HEAD_DIM, WIDTH, WINDOW = 24, 512, 4, 128, 2048, 256
Q8_0, F32 = gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.F32


def write_model(path: Path) -> None:
    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_name("gemma-3-shaped-small-random")
    writer.add_block_count(LAYERS)
    writer.add_context_length(32768)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(WIDTH)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(1)
    writer.add_key_length(HEAD_DIM)
    writer.add_value_length(HEAD_DIM)
    writer.add_rope_freq_base(1_000_000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_sliding_window(WINDOW)
    vocab = add_bundled_tokenizer(writer)
    add = random_tensor_writer(writer)
    add("token_embd.weight", vocab, HIDDEN, kind=Q8_0)
    add("output_norm.weight", HIDDEN, kind=F32)
    for layer in range(LAYERS):
        prefix = f"blk.{layer}"
        for norm in ("attn_norm", "post_attention_norm", "ffn_norm", "post_ffw_norm"):
            add(f"{prefix}.{norm}.weight", HIDDEN, kind=F32)
        add(f"{prefix}.attn_q_norm.weight", HEAD_DIM, kind=F32)
        add(f"{prefix}.attn_k_norm.weight", HEAD_DIM, kind=F32)
        add(f"{prefix}.attn_q.weight", HEADS * HEAD_DIM, HIDDEN)
        add(f"{prefix}.attn_k.weight", HEAD_DIM, HIDDEN)
        add(f"{prefix}.attn_v.weight", HEAD_DIM, HIDDEN)
        add(f"{prefix}.attn_output.weight", HIDDEN, HEADS * HEAD_DIM)
        add(f"{prefix}.ffn_gate.weight", WIDTH, HIDDEN)
        add(f"{prefix}.ffn_up.weight", WIDTH, HIDDEN)
        add(f"{prefix}.ffn_down.weight", HIDDEN, WIDTH)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def run(path: Path, hybrid: bool, args: argparse.Namespace) -> dict[str, float]:
    llm = LLM(
        model=str(path), quantization="gguf", max_model_len=args.prompt_len + args.output_len,
        kv_cache_memory_bytes=args.kv_mib * 2**20, disable_hybrid_kv_cache_manager=not hybrid,
        max_num_batched_tokens=args.batched_tokens,
    )  # fmt: skip
    engine = llm.llm_engine
    try:
        kv = engine.kv_cache_manager
        concurrency = kv.num_blocks // kv.blocks_for_sequence(
            args.prompt_len + args.output_len, engine.scheduler.max_num_batched_tokens
        )
        decoding: list[int] = []
        engine.add_stats_listener(lambda stats: decoding.append(stats.scheduler.num_running_reqs))
        prompts = [
            {"prompt_token_ids": [(1000 + 37 * r + 11 * i) % 40000 + 100 for i in range(args.prompt_len)]}
            for r in range(args.requests)
        ]
        params = SamplingParams(temperature=0, max_tokens=args.output_len, ignore_eos=True)
        start = time.perf_counter()
        outputs = llm.generate(prompts, params, use_tqdm=False)
        elapsed = time.perf_counter() - start
        produced = sum(len(o.outputs[0].token_ids) for o in outputs)
        return {
            "max_concurrency": concurrency,
            "preemptions": engine.scheduler.total_preemptions,
            "most_running": max(decoding, default=0),
            "seconds": elapsed,
            "output_tok_s": produced / elapsed,
        }
    finally:
        engine.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=1500)
    parser.add_argument("--output-len", type=int, default=256)
    parser.add_argument("--kv-mib", type=int, default=64)
    parser.add_argument("--batched-tokens", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    path = cached_model("gemma3-small-shaped-q4_0.gguf", write_model)
    results: dict[str, list[dict[str, float]]] = {"hybrid (default)": [], "every block kept": []}
    for round_index in range(args.rounds):
        for name, hybrid in (("hybrid (default)", True), ("every block kept", False)):
            result = run(path, hybrid, args)
            results[name].append(result)
            print(f"round {round_index + 1} {name}: {result}", flush=True)
    print(
        "\n| system | max concurrency | preemptions | most running | seconds (median) | output tok/s (median) |"
    )
    print("|---|---|---|---|---|---|")
    for name, rows in results.items():
        seconds = statistics.median(r["seconds"] for r in rows)
        rate = statistics.median(r["output_tok_s"] for r in rows)
        first = rows[0]
        print(
            f"| {name} | {first['max_concurrency']:.0f} | {first['preemptions']:.0f} | {first['most_running']:.0f} | "
            f"{seconds:.1f} | {rate:.1f} |"
        )


if __name__ == "__main__":
    main()
