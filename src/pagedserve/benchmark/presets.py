"""The named workloads of BENCHMARKS.md, shared by the CLI, `benchmarks/` and the peer scripts.

Plain Python with no dependencies, so the peers' own virtualenvs can import it from `src/`.
"""

from __future__ import annotations

from dataclasses import dataclass

TOPICS = (
    "the ocean",
    "Kubernetes",
    "paged attention",
    "a cat",
    "Paris",
    "prime numbers",
    "GPUs",
    "the moon",
)


def topic_prompts(num_prompts: int) -> list[str]:
    """The offline workloads' user messages, in a fixed order (topic cycles fastest)."""
    return [
        f"Write a short paragraph about {TOPICS[i % len(TOPICS)]} (variant {i})." for i in range(num_prompts)
    ]


def topic_messages(num_prompts: int) -> list[list[dict[str, str]]]:
    """The same prompts as one-turn chat conversations (the chat template is applied by each runner)."""
    return [[{"role": "user", "content": text}] for text in topic_prompts(num_prompts)]


@dataclass(frozen=True)
class OfflinePreset:
    name: str
    num_prompts: int
    output_len: int
    warmup: bool  # one untimed request first (single-stream measures steady decode)


@dataclass(frozen=True)
class ServePreset:
    name: str
    num_prompts: int
    input_len: int
    output_len: int
    max_concurrency: int | None
    endpoint: str = "/v1/completions"


OFFLINE_PRESETS: dict[str, OfflinePreset] = {
    "offline-256x128": OfflinePreset("offline-256x128", num_prompts=256, output_len=128, warmup=False),
    "offline-32x64": OfflinePreset("offline-32x64", num_prompts=32, output_len=64, warmup=False),
    "single-stream": OfflinePreset("single-stream", num_prompts=1, output_len=128, warmup=True),
}

SERVE_PRESETS: dict[str, ServePreset] = {
    "serve-c32": ServePreset("serve-c32", num_prompts=200, input_len=128, output_len=128, max_concurrency=32),
}

SWEEP_CONCURRENCIES = (1, 4, 16, 32, 64, 128)
DEFAULT_SLO_TTFT_MS = 500.0
