"""Hugging Face transformers as a peer: static batching (`generate`, left padding) and `generate_batch`.

Runs in the project's venv on the same bundled GGUF (dequantized by transformers), bfloat16, greedy, with the
output length forced (min_new_tokens / EOS disabled) so every system generates the same number of tokens.
"""

from __future__ import annotations

import time
from typing import Any

from pagedserve.benchmark.model_files import bundled_gguf_path
from pagedserve.benchmark.offline import OfflineResult, make_result

STATIC_BATCH_SIZE = 32


def load_model(dtype: str = "bfloat16") -> tuple[Any, Any]:
    """The bundled GGUF, every weight unpacked to a dense `dtype` tensor (as benchmarks.md measures it).

    Recent transformers can keep GGUF blocks packed and dequantize inside each matmul; asking for
    `dequantize=True` keeps the comparison to plain dense PyTorch layers, like pagedserve's and vLLM's.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = bundled_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    kwargs: dict[str, Any] = {"gguf_file": gguf.name, "dtype": getattr(torch, dtype)}
    try:
        from transformers import GgufConfig

        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:  # older transformers always dequantize GGUF at load
        pass
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), **kwargs)
    model.eval()
    return model, tokenizer


def _pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def static_batches(
    model: Any,
    tokenizer: Any,
    prompt_ids: list[list[int]],
    output_len: int,
    batch_size: int = STATIC_BATCH_SIZE,
) -> tuple[float, list[int]]:
    """`model.generate` on left-padded batches of `batch_size`, one after another. Returns (seconds, lengths)."""
    import torch

    pad = _pad_id(tokenizer)
    lengths: list[int] = []
    start = time.perf_counter()
    for first in range(0, len(prompt_ids), batch_size):
        batch = prompt_ids[first : first + batch_size]
        width = max(len(p) for p in batch)
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch])
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
        with torch.inference_mode():
            out = model.generate(
                input_ids=input_ids,
                attention_mask=attention,
                max_new_tokens=output_len,
                min_new_tokens=output_len,
                do_sample=False,
                pad_token_id=pad,
            )
        lengths.extend([out.shape[1] - width] * len(batch))
    return time.perf_counter() - start, lengths


def static_throughput(
    model: Any,
    tokenizer: Any,
    workload: str,
    prompt_ids: list[list[int]],
    output_len: int,
    warmup: bool = False,
) -> OfflineResult:
    if warmup:
        static_batches(model, tokenizer, prompt_ids[:1], output_len)
    elapsed, lengths = static_batches(model, tokenizer, prompt_ids, output_len)
    decode = (
        single_stream_decode(model, tokenizer, prompt_ids[0], output_len) if len(prompt_ids) == 1 else None
    )
    return make_result(
        workload, "transformers static", [len(p) for p in prompt_ids], lengths, elapsed, decode
    )


def single_stream_decode(model: Any, tokenizer: Any, prompt: list[int], output_len: int) -> float:
    """Decode tokens/s of one request: a logits processor timestamps each step, prefill excluded."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    stamps: list[float] = []

    class Stamp(LogitsProcessor):
        def __call__(self, input_ids: Any, scores: Any) -> Any:
            stamps.append(time.perf_counter())
            return scores

    with torch.inference_mode():
        model.generate(
            input_ids=torch.tensor([prompt]),
            max_new_tokens=output_len,
            min_new_tokens=output_len,
            do_sample=False,
            pad_token_id=_pad_id(tokenizer),
            logits_processor=LogitsProcessorList([Stamp()]),
        )
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def generate_batch_throughput(
    model: Any, workload: str, prompt_ids: list[list[int]], output_len: int
) -> OfflineResult:
    """transformers' own continuous batching (paged attention in PyTorch)."""
    from transformers import GenerationConfig

    config = GenerationConfig(max_new_tokens=output_len, do_sample=False, eos_token_id=-1)
    start = time.perf_counter()
    outputs = model.generate_batch(inputs=prompt_ids, generation_config=config, progress_bar=False)
    elapsed = time.perf_counter() - start
    lengths = [len(o.generated_tokens) for o in outputs.values()]
    return make_result(
        workload, "transformers generate_batch", [len(p) for p in prompt_ids], lengths, elapsed
    )
