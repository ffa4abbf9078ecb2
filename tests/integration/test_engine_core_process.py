"""The engine core in its own process (`EngineCoreClient`, what `pagedserve serve` runs): the same greedy tokens as
transformers (up to near ties), stop strings and aborts handled across the process boundary with every KV block
returned, a clean shutdown, and a killed core failing its streams instead of hanging them."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest
from tests.integration.test_bundled_vs_hf import NUM_TOKENS, assert_matches

from pagedserve.config import CacheConfig, EngineConfig
from pagedserve.core.stats import EngineStats
from pagedserve.engine.core_client import EngineCoreClient, EngineCoreDiedError
from pagedserve.errors import EngineDeadError
from pagedserve.model_config import ModelConfig
from pagedserve.sampling_params import SamplingParams

pytestmark = [pytest.mark.slow, pytest.mark.model]

CONFIG = EngineConfig(
    model=ModelConfig(dtype="float32", max_model_len=1024, seed=0),
    cache=CacheConfig(kv_cache_memory_bytes=256 * 1024**2),
)


async def start(**kwargs) -> EngineCoreClient:
    client = await asyncio.to_thread(EngineCoreClient, CONFIG, **kwargs)
    await client.start()
    return client


async def last_output(client: EngineCoreClient, prompt, params: SamplingParams, request_id: str):
    return [output async for output in client.generate(prompt, params, request_id)][-1]


def test_core_process_matches_transformers_and_returns_every_block(chat_prompts, reference, bundled_llm_fp32):
    async def scenario() -> None:
        client = await start()
        stats: list[EngineStats] = []
        client.add_stats_listener(stats.append)
        try:
            greedy = SamplingParams(temperature=0.0, max_tokens=NUM_TOKENS, ignore_eos=True)
            outputs = await asyncio.gather(
                *(
                    last_output(client, {"prompt_token_ids": p}, greedy, f"p{i}")
                    for i, p in enumerate(chat_prompts)
                )
            )
            assert_matches(reference, outputs)
            # A stop string ends the text where the in-process engine ends it.
            stop = SamplingParams(temperature=0.0, max_tokens=NUM_TOKENS, stop=["."])
            remote = await last_output(client, {"prompt_token_ids": chat_prompts[0]}, stop, "stop")
            local = bundled_llm_fp32.generate({"prompt_token_ids": chat_prompts[0]}, stop, use_tqdm=False)[0]
            assert remote.outputs[0].finish_reason == "stop" and remote.outputs[0].stop_reason == "."
            assert remote.outputs[0].text == local.outputs[0].text
            assert remote.outputs[0].token_ids == local.outputs[0].token_ids
            # A client that leaves early aborts: the core frees its blocks and publishes the gauges.
            stream = client.generate(
                "Tell me a long story.", SamplingParams(max_tokens=500, ignore_eos=True), "gone"
            )
            await anext(stream)
            await stream.aclose()
            deadline = time.monotonic() + 10
            while not (
                stats
                and stats[-1].scheduler.num_used_blocks == 0
                and stats[-1].scheduler.num_running_reqs == 0
            ):
                assert time.monotonic() < deadline, stats[-1].scheduler
                await asyncio.sleep(0.05)
            finished = [f for s in stats for f in s.iteration.finished_requests]
            assert sorted(f.finish_reason for f in finished) == ["abort"] + ["length"] * 8 + ["stop"]
            assert client.num_unfinished_requests == 0
        finally:
            await client.shutdown()
        assert client._process.returncode == 0

    asyncio.run(scenario())


def test_killed_core_fails_open_streams_and_new_requests() -> None:
    async def scenario() -> None:
        deaths: list[BaseException] = []
        client = await start(on_dead=deaths.append)
        try:
            stream = client.generate("Count:", SamplingParams(max_tokens=800, ignore_eos=True), "long")
            await anext(stream)
            os.kill(client.pid, signal.SIGKILL)
            with pytest.raises(EngineDeadError):
                async with asyncio.timeout(30):
                    async for _ in stream:
                        pass
            assert len(deaths) == 1 and isinstance(deaths[0], EngineCoreDiedError)
            assert "-9" in str(deaths[0]) and not client.is_running
            with pytest.raises(EngineDeadError):
                await anext(client.generate("x", SamplingParams(), "after"))
        finally:
            await client.shutdown()
        assert not Path(f"/proc/{client.pid}").exists()

    asyncio.run(scenario())
