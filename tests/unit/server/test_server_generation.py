"""Generation (one HTTP request's engine requests): closing it early aborts every engine request and
releases admission, also for merged multi-prompt streams whose feeders are mid-flight."""

from __future__ import annotations

import asyncio
import time

from pagedserve.config import EngineConfig
from pagedserve.engine.async_engine import AsyncEngine
from pagedserve.model_config import ModelConfig
from pagedserve.sampling_params import SamplingParams
from pagedserve.server.generation import Generation
from pagedserve.server.state import ServerState
from pagedserve.server_config import ServerConfig

from .fake_engine import FakeLLMEngine


def test_closing_a_merged_stream_early_aborts_all_requests() -> None:
    async def scenario() -> None:
        fake = FakeLLMEngine(EngineConfig(model=ModelConfig(max_model_len=512)))
        engine = AsyncEngine(fake)
        await engine.start()
        state = ServerState(ServerConfig(), ["m"])
        params = SamplingParams(max_tokens=300, ignore_eos=True)
        generation = Generation(state, engine, "req", [[5, 6], [7, 8], [9]], params)
        generation.admit()
        await generation.start()
        stream = generation.stream()
        for _ in range(6):
            await anext(stream)
        assert len(fake.requests) == 3 and state.in_flight == 3
        await generation.close()  # the response was cancelled; the stream generator is left suspended
        deadline = time.monotonic() + 2
        while fake.requests and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert not fake.requests and state.in_flight == 0 and engine.num_unfinished_requests == 0
        await generation.close()  # idempotent
        assert state.in_flight == 0
        await engine.shutdown()

    asyncio.run(scenario())
