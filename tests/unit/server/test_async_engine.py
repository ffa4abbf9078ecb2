"""AsyncEngine over the fake engine: streaming, refusal, abort on early exit, fault injection, stall watchdog."""

from __future__ import annotations

import asyncio
import time

import pytest

from pagedserve.config import EngineConfig
from pagedserve.engine.async_engine import AsyncEngine
from pagedserve.engine.faults import INJECT_FAILURE_ENV, INJECT_HANG_ENV
from pagedserve.errors import ContextLengthError, EngineDeadError
from pagedserve.model_config import ModelConfig
from pagedserve.sampling_params import SamplingParams

from .fake_engine import FakeLLMEngine


def make(**kwargs: object) -> tuple[FakeLLMEngine, AsyncEngine]:
    fake = FakeLLMEngine(EngineConfig(model=ModelConfig(max_model_len=256)))
    return fake, AsyncEngine(fake, **kwargs)  # type: ignore[arg-type]


async def drain(engine: AsyncEngine, request_id: str, max_tokens: int = 5) -> list:
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    return [out async for out in engine.generate({"prompt_token_ids": [5, 6, 7]}, params, request_id)]


def test_stream_is_cumulative_and_ends_finished() -> None:
    async def scenario() -> None:
        fake, engine = make()
        await engine.start()
        outputs = await drain(engine, "r1", 6)
        assert outputs[-1].finished and len(outputs[-1].outputs[0].token_ids) == 6
        lengths = [len(o.outputs[0].token_ids) for o in outputs]
        assert lengths == sorted(lengths)
        assert engine.num_unfinished_requests == 0 and not fake.has_unfinished_requests()
        await engine.shutdown()

    asyncio.run(scenario())


def test_refusal_raises_before_streaming_and_leaves_nothing() -> None:
    async def scenario() -> None:
        fake, engine = make()
        await engine.start()
        with pytest.raises(ContextLengthError):
            await drain(engine, "too-long", 1000)
        assert engine.num_unfinished_requests == 0 and not fake.requests
        await engine.shutdown()

    asyncio.run(scenario())


def test_leaving_early_aborts_within_a_step() -> None:
    async def scenario() -> None:
        fake, engine = make()
        await engine.start()
        stream = engine.generate(
            {"prompt_token_ids": [5]}, SamplingParams(max_tokens=200, ignore_eos=True), "r"
        )
        await anext(stream)
        steps = fake.num_steps
        await stream.aclose()
        deadline = time.monotonic() + 2
        while fake.requests and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        assert not fake.requests and fake.num_steps <= steps + 3
        assert fake._used_blocks() == 0
        await engine.shutdown()

    asyncio.run(scenario())


def test_cancelled_consumer_aborts_while_queued() -> None:
    async def scenario() -> None:
        fake, engine = make()
        fake.config.scheduler.max_num_seqs = 1
        await engine.start()
        first = asyncio.create_task(drain(engine, "running", 100))
        await asyncio.sleep(0.05)
        queued = asyncio.create_task(drain(engine, "queued", 5))
        await asyncio.sleep(0.05)
        assert "queued" in fake.requests and fake.requests["queued"] in fake.waiting
        queued.cancel()
        first.cancel()
        await asyncio.sleep(0.1)
        assert not fake.requests and engine.num_unfinished_requests == 0
        await engine.shutdown()

    asyncio.run(scenario())


def test_injected_step_failure_fails_streams_and_reports_death(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(INJECT_FAILURE_ENV, "3")
    deaths: list[BaseException] = []

    async def scenario() -> None:
        _, engine = make(on_dead=deaths.append)
        await engine.start()
        with pytest.raises(EngineDeadError):
            await drain(engine, "r", 50)
        await asyncio.sleep(0.05)
        assert not engine.is_running and len(deaths) == 1 and isinstance(deaths[0], RuntimeError)
        with pytest.raises(EngineDeadError):
            await drain(engine, "after", 1)
        await engine.shutdown()

    asyncio.run(scenario())


def test_injected_hang_is_declared_dead_by_the_watchdog(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(INJECT_HANG_ENV, "2")

    async def scenario() -> None:
        _, engine = make(stall_timeout=0.4)
        await engine.start()
        started = time.monotonic()
        with pytest.raises(EngineDeadError):
            await drain(engine, "r", 50)
        assert time.monotonic() - started < 3
        # A request submitted to the dead engine is refused at once, not queued forever.
        with pytest.raises(EngineDeadError):
            await asyncio.wait_for(drain(engine, "later", 1), 1)
        await engine.shutdown()

    asyncio.run(scenario())


def test_bad_injection_value_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(INJECT_FAILURE_ENV, "0")
    with pytest.raises(ValueError, match=INJECT_FAILURE_ENV):
        make()


def test_stats_listeners_get_every_step() -> None:
    async def scenario() -> None:
        fake, engine = make()
        seen: list[int] = []
        engine.add_stats_listener(lambda stats: seen.append(stats.iteration.num_generation_tokens))
        await engine.start()
        await drain(engine, "r", 4)
        assert sum(seen) == 4
        await engine.shutdown()

    asyncio.run(scenario())


def test_abort_stats_are_published_even_when_idle_afterwards() -> None:
    async def scenario() -> None:
        fake, engine = make()
        reasons: list[str] = []
        usage: list[float] = []

        def listen(stats: object) -> None:
            reasons.extend(f.finish_reason for f in stats.iteration.finished_requests)  # type: ignore[attr-defined]
            usage.append(stats.scheduler.kv_cache_usage)  # type: ignore[attr-defined]

        engine.add_stats_listener(listen)
        await engine.start()
        stream = engine.generate(
            {"prompt_token_ids": [5]}, SamplingParams(max_tokens=200, ignore_eos=True), "r"
        )
        await anext(stream)
        await stream.aclose()
        deadline = time.monotonic() + 2
        while "abort" not in reasons and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert reasons == ["abort"] and usage[-1] == 0.0
        await engine.shutdown()

    asyncio.run(scenario())
