"""Offline embedding throughput of a BERT encoder: pagedserve's LLM.embed against transformers run the way
sentence-transformers runs it (texts sorted by length, batches of 32 padded to their longest, attention mask, mean
pooling, normalize), in one process, same threads, rounds interleaved.

No embedding model can be downloaded here, so the checkpoint is all-MiniLM-L6-v2's shape (6 layers, hidden 384, 12
heads, intermediate 1536, vocabulary 30522) with transformers' random initialisation, written to .bench-cache/.
Throughput does not depend on what the weights say. The prompts are token ids (no tokenizer in the timing): `--texts`
of lengths drawn uniformly from [--min-len, --max-len] ([CLS] ... [SEP] included), as RAG chunks are.

    .venv/bin/python benchmarks/encoder_embed.py [--texts 512] [--min-len 16] [--max-len 256] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import transformers

CACHE = Path(__file__).resolve().parents[1] / ".bench-cache" / "minilm-l6-shaped"


def write_model(folder: Path) -> transformers.BertModel:
    config = transformers.BertConfig(
        vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536,
        max_position_embeddings=512,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.BertModel(config, add_pooling_layer=False).eval()
    if not (folder / "config.json").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(folder)
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        ]
        (folder / "modules.json").write_text(json.dumps(modules))
        (folder / "1_Pooling").mkdir(exist_ok=True)
        (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
        _write_tokenizer(folder)
    return transformers.BertModel.from_pretrained(folder, add_pooling_layer=False).eval()


def _write_tokenizer(folder: Path) -> None:
    """A word-level tokenizer over the vocabulary (the server needs one; the timing feeds token ids)."""
    import tokenizers

    vocab = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102} | {f"w{i}": i for i in range(1000, 30522)}
    words = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    words.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=words, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]"
    ).save_pretrained(folder)


def prompts(count: int, low: int, high: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(1)
    lengths = torch.randint(low, high + 1, (count,), generator=generator).tolist()
    return [[101, *torch.randint(1000, 30522, (n - 2,), generator=generator).tolist(), 102] for n in lengths]


def transformers_embed(
    model: transformers.BertModel, texts: list[list[int]], batch: int = 32
) -> torch.Tensor:
    """sentence-transformers' encode(): length-sorted batches, padded, mean over the mask, normalized."""
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    out = torch.empty(len(texts), model.config.hidden_size)
    with torch.inference_mode():
        for start in range(0, len(order), batch):
            ids = order[start : start + batch]
            width = max(len(texts[i]) for i in ids)
            input_ids = torch.zeros(len(ids), width, dtype=torch.long)
            mask = torch.zeros(len(ids), width, dtype=torch.long)
            for row, i in enumerate(ids):
                input_ids[row, : len(texts[i])] = torch.tensor(texts[i])
                mask[row, : len(texts[i])] = 1
            hidden = model(input_ids=input_ids, attention_mask=mask).last_hidden_state
            pooled = (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
            out[ids] = torch.nn.functional.normalize(pooled, dim=-1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--min-len", type=int, default=16)
    parser.add_argument("--max-len", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from pagedserve import LLM

    reference = write_model(CACHE)
    texts = prompts(args.texts, args.min_len, args.max_len)
    tokens = sum(map(len, texts))
    llm = LLM(str(CACHE), dtype="float32")
    print(
        f"threads {torch.get_num_threads()}, {args.texts} texts, {tokens} tokens, kernels {llm.llm_engine.info.cpu_kernels}"
    )
    # Warm-up, and the check that both give the same vectors.
    ours = torch.tensor(
        [
            o.outputs.embedding
            for o in llm.embed([{"prompt_token_ids": t} for t in texts[:32]], use_tqdm=False)
        ]
    )
    theirs = transformers_embed(reference, texts[:32])
    print(f"max |ours - transformers| over 32 vectors: {float((ours - theirs).abs().max()):.2e}")
    times: dict[str, list[float]] = {"pagedserve": [], "transformers": []}
    for _ in range(args.rounds):
        start = time.perf_counter()
        llm.embed([{"prompt_token_ids": t} for t in texts], use_tqdm=False)
        times["pagedserve"].append(time.perf_counter() - start)
        start = time.perf_counter()
        transformers_embed(reference, texts)
        times["transformers"].append(time.perf_counter() - start)
    llm.llm_engine.shutdown()
    for name, seconds in times.items():
        best = statistics.median(seconds)
        print(
            f"{name:13s} median {best:6.2f} s  {args.texts / best:7.1f} texts/s  {tokens / best:8.0f} tokens/s  rounds {', '.join(f'{s:.2f}' for s in seconds)}"
        )
    ratios = [t / p for p, t in zip(times["pagedserve"], times["transformers"])]
    print(f"pagedserve / transformers throughput, per round: {', '.join(f'{r:.2f}x' for r in ratios)}")


if __name__ == "__main__":
    main()
