"""Everything `bench serve` / `bench sweep` settle before the first request: model name, tokenizer, requests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pagedserve.benchmark.datasets import SampleRequest, build_requests
from pagedserve.benchmark.model_files import bundled_gguf_path, load_tokenizer, local_model_source
from pagedserve.benchmark.server_info import ServedModel, fetch_served_model


@dataclass
class ClientSetup:
    served: ServedModel
    model: str  # sent as "model"
    tokenizer: Any
    tokenizer_id: str

    def count_tokens(self) -> Callable[[str], int]:
        tokenizer = self.tokenizer
        return lambda text: len(tokenizer(text, add_special_tokens=False).input_ids)


def prepare_client(
    base_url: str, model: str | None, tokenizer: str | None, api_key: str | None
) -> ClientSetup:
    """Ask the server which model it serves; load the tokenizer from --tokenizer, the server's path, or ours."""
    served = asyncio.run(fetch_served_model(base_url, api_key))
    source = tokenizer or local_model_source(served.root) or local_model_source(served.id)
    try:
        loaded = load_tokenizer(source)
    except ValueError:
        raise
    except Exception as exc:  # transformers raises many kinds for an unusable folder
        raise ValueError(f"cannot load a tokenizer from {source or 'the bundled model'}: {exc}") from exc
    return ClientSetup(
        served=served,
        model=model or served.id,
        tokenizer=loaded,
        tokenizer_id=str(source or bundled_gguf_path()),
    )


def make_requests(
    setup: ClientSetup,
    dataset: str,
    num_prompts: int,
    input_len: int,
    output_len: int,
    prompts_file: str | None,
    range_ratio: float,
    seed: int,
) -> list[SampleRequest]:
    return build_requests(
        dataset, setup.tokenizer, num_prompts, input_len, output_len, prompts_file, range_ratio, seed
    )
