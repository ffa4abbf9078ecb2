"""Request sets for `bench serve`: random token prompts of an exact length, a prompts file, the topic prompts."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pagedserve.benchmark.presets import topic_prompts

DATASETS = ("random", "prompts-file", "topics")


@dataclass
class SampleRequest:
    prompt: str
    prompt_len: int  # tokens, by the client's tokenizer
    expected_output_len: int


def _token_count(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False).input_ids)


def _lengths(rng: random.Random, length: int, range_ratio: float, count: int) -> list[int]:
    low = max(1, int(length * (1 - range_ratio)))
    high = max(low, int(length * (1 + range_ratio)))
    return [rng.randint(low, high) for _ in range(count)]


def random_requests(
    tokenizer: Any,
    num_prompts: int,
    input_len: int,
    output_len: int,
    range_ratio: float = 0.0,
    seed: int = 0,
) -> list[SampleRequest]:
    """Prompts of random ordinary tokens, re-tokenized so the text is `input_len` tokens long (as vLLM's)."""
    if num_prompts < 1:
        raise ValueError("num_prompts must be >= 1")
    if input_len < 1 or output_len < 1:
        raise ValueError("input_len and output_len must be >= 1")
    if not 0 <= range_ratio < 1:
        raise ValueError("random_range_ratio must be in [0, 1)")
    rng = random.Random(seed)
    special = set(tokenizer.all_special_ids)
    vocab = [i for i in range(len(tokenizer)) if i not in special]
    input_lens = _lengths(rng, input_len, range_ratio, num_prompts)
    output_lens = _lengths(rng, output_len, range_ratio, num_prompts)
    requests: list[SampleRequest] = []
    for want, out_len in zip(input_lens, output_lens):
        ids = [rng.choice(vocab) for _ in range(want)]
        # Decoding then encoding merges or splits some tokens; trim or top up until the text has `want` tokens.
        for _ in range(8):
            text = tokenizer.decode(ids)
            ids = tokenizer(text, add_special_tokens=False).input_ids
            if len(ids) == want:
                break
            ids = ids[:want] + [rng.choice(vocab) for _ in range(max(0, want - len(ids)))]
        text = tokenizer.decode(ids)
        requests.append(SampleRequest(text, _token_count(tokenizer, text), out_len))
    return requests


def read_prompts_file(path: str | Path) -> list[str]:
    """One prompt per line; a `.jsonl` file holds objects with a "prompt" field."""
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"prompts file {file} does not exist")
    prompts: list[str] = []
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        if file.suffix == ".jsonl":
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{file}:{number}: not JSON ({exc.msg})") from exc
            if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
                raise ValueError(f'{file}:{number}: expected an object with a string "prompt"')
            prompts.append(record["prompt"])
        else:
            prompts.append(line)
    if not prompts:
        raise ValueError(f"prompts file {file} holds no prompts")
    return prompts


def text_requests(
    tokenizer: Any, prompts: list[str], num_prompts: int, output_len: int
) -> list[SampleRequest]:
    """`num_prompts` requests cycling through `prompts`."""
    if num_prompts < 1 or output_len < 1:
        raise ValueError("num_prompts and output_len must be >= 1")
    chosen = [prompts[i % len(prompts)] for i in range(num_prompts)]
    return [SampleRequest(p, _token_count(tokenizer, p), output_len) for p in chosen]


def build_requests(
    dataset: str,
    tokenizer: Any,
    num_prompts: int,
    input_len: int,
    output_len: int,
    prompts_file: str | None = None,
    range_ratio: float = 0.0,
    seed: int = 0,
) -> list[SampleRequest]:
    if dataset == "random":
        return random_requests(tokenizer, num_prompts, input_len, output_len, range_ratio, seed)
    if dataset == "prompts-file":
        if not prompts_file:
            raise ValueError("--dataset prompts-file needs --prompts-file PATH")
        return text_requests(tokenizer, read_prompts_file(prompts_file), num_prompts, output_len)
    if dataset == "topics":
        return text_requests(tokenizer, topic_prompts(num_prompts), num_prompts, output_len)
    raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {dataset!r}")
