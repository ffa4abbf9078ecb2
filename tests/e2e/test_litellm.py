"""LiteLLM's proxy (the PyPI package, in a venv of its own: tests/tool_venv.py) in front of two real `pagedserve
serve` replicas, configured by deploy/litellm/config.yaml exactly as shipped (only its environment variables are
set here), driven by the official openai SDK with no client-side retries:

- requests spread over both replicas (each replica's `vllm:request_success_total` against LiteLLM's
  x-litellm-model-api-base header);
- a streamed chat arrives through the proxy in many chunks and equals the non-streamed greedy answer;
- a SIGKILLed replica costs clients nothing: the config's retry policy (num_retries 3; a connection refused is
  allowed 0 fails, cooldown_time 30) retries the failed attempt at once and takes the dead replica out at its first
  failed request, before the retry picks again, so no request needs more than 1 of its 3 retries;
- then the proxy and the replicas stop and leave no process behind.

The tests share one proxy and two replicas and run in file order (the failover test kills a replica). The replicas
run float32 so that a prefix-cache hit on one replica and a cold prefill on the other cannot flip a greedy near-tie
(in bfloat16, first-token logprobs differed by up to 0.13 between the two paths). The first run builds LiteLLM's
venv in ~/.cache/pagedserve/litellm-venv (about 2 minutes from the package index); later runs reuse it.
"""

from __future__ import annotations

import collections
import os
import secrets
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from openai import OpenAI

from pagedserve.models.bundled import BUNDLED_MODEL_NAME
from tests.http_ready import wait_http_ready
from tests.tool_venv import tool_venv

from .conftest import READY_TIMEOUT_S, ServerProcess, all_gone, descendants, free_port, launch, metric_value

pytestmark = [pytest.mark.server, pytest.mark.slow, pytest.mark.model]

LITELLM = "litellm[proxy]==1.108.7"
CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "litellm" / "config.yaml"
MODEL = BUNDLED_MODEL_NAME
# float32 (see above); 512 tokens of context and 64 MiB of KV cache are plenty for these short chats.
REPLICA_ARGS = ("--dtype", "float32", "--max-model-len", "512", "--kv-cache-memory-bytes", "64MiB")
REPLICA_KEY = "replica-" + secrets.token_hex(8)
SUCCESS = "vllm:request_success_total"
# What the config promises: a dead replica (connection refused) fails one attempt of one request, then cools down.
MAX_RETRIES_FOR_A_DEAD_REPLICA = 1


@dataclass
class Fleet:
    replicas: list[ServerProcess]
    proxy: subprocess.Popen[bytes]
    proxy_url: str
    proxy_log: Path
    master_key: str
    tree: list[int]  # every process started for the fleet, children included

    def client(self) -> OpenAI:
        """The openai SDK on the proxy, with no retries of its own: only LiteLLM's retry policy hides failures."""
        return OpenAI(base_url=f"{self.proxy_url}/v1", api_key=self.master_key, max_retries=0, timeout=120)

    def log(self) -> str:
        return self.proxy_log.read_text(errors="replace")[-4000:]


def _start_proxy(
    tmp: Path, replicas: list[ServerProcess], master_key: str
) -> tuple[subprocess.Popen[bytes], int]:
    bin_dir = tool_venv("litellm", LITELLM)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LITELLM_", "DATABASE_URL"))}
    env.update(
        LITELLM_MASTER_KEY=master_key,
        LITELLM_LOCAL_MODEL_COST_MAP="True",  # no network here: use the cost map shipped in the package
        PAGEDSERVE_REPLICA_1_API_BASE=f"{replicas[0].url}/v1",
        PAGEDSERVE_REPLICA_2_API_BASE=f"{replicas[1].url}/v1",
        PAGEDSERVE_API_KEY=REPLICA_KEY,
    )
    command = [str(bin_dir / "litellm"), "--config", str(CONFIG), "--host", "127.0.0.1", "--port", str(port)]
    with (tmp / "litellm.log").open("wb") as log:
        proxy = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp)
    return proxy, port


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("litellm")
    tool_venv("litellm", LITELLM)  # first run: builds the venv before anything else competes for the CPU
    replicas = [launch(tmp, *REPLICA_ARGS, env={"VLLM_API_KEY": REPLICA_KEY}) for _ in range(2)]
    proxy: subprocess.Popen[bytes] | None = None
    try:
        for replica in replicas:
            replica.wait_ready()
        master_key = "sk-" + secrets.token_hex(16)
        proxy, port = _start_proxy(tmp, replicas, master_key)
        started = Fleet(replicas, proxy, f"http://127.0.0.1:{port}", tmp / "litellm.log", master_key, [])
        wait_http_ready(
            proxy, f"{started.proxy_url}/health/readiness", started.log, "litellm", READY_TIMEOUT_S
        )
        for process in (proxy, *(r.process for r in replicas)):
            started.tree += [process.pid, *descendants(process.pid)]
        yield started
    finally:
        for process in [*(r.process for r in replicas), *([proxy] if proxy else [])]:
            if process.poll() is None:
                process.kill()
            process.wait()


def _chat(client: OpenAI, content: str, **kwargs: Any) -> tuple[Any, httpx.Headers]:
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": content}], temperature=0, **kwargs
    )
    return raw.parse(), raw.headers


def _successes(fleet: Fleet) -> list[float]:
    return [metric_value(replica, SUCCESS) for replica in fleet.replicas]


def test_config_lists_one_model_twice_with_env_api_bases() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    deployments = config["model_list"]
    assert [d["model_name"] for d in deployments] == [MODEL, MODEL]
    assert {d["litellm_params"]["model"] for d in deployments} == {f"hosted_vllm/{MODEL}"}
    assert [d["litellm_params"]["api_base"] for d in deployments] == [
        "os.environ/PAGEDSERVE_REPLICA_1_API_BASE",
        "os.environ/PAGEDSERVE_REPLICA_2_API_BASE",
    ]
    router = config["router_settings"]
    dead_replica_fails = router["allowed_fails_policy"]["InternalServerErrorAllowedFails"]
    assert router["num_retries"] > MAX_RETRIES_FOR_A_DEAD_REPLICA == dead_replica_fails + 1


def test_requests_spread_over_both_replicas(fleet: Fleet) -> None:
    client = fleet.client()
    before = _successes(fleet)
    served_by: collections.Counter[str] = collections.Counter()
    for i in range(12):
        response, headers = _chat(client, f"Say hello to friend number {i}.", max_tokens=4)
        assert response.choices[0].message.content and response.usage.completion_tokens <= 4
        assert headers["x-litellm-attempted-retries"] == "0"
        served_by[headers["x-litellm-model-api-base"]] += 1
    delta = [after - start for after, start in zip(_successes(fleet), before)]
    # simple-shuffle picks at random: all 12 on one replica has odds of 1 in 2048.
    assert all(count >= 1 for count in delta), (delta, served_by)
    assert sum(delta) == 12
    assert served_by == {f"{r.url}/v1": count for r, count in zip(fleet.replicas, delta)}


def test_streaming_passes_through(fleet: Fleet) -> None:
    client = fleet.client()
    # An answer of ~30 tokens: a server or proxy that falls behind merges the tokens queued for a stream into one
    # chunk (as vLLM does), so an 8-token answer came through the proxy as 3 pieces once (2026-12-07); a buffered
    # body would be one piece whatever its length.
    question = "List the days of the week, separated by commas."
    plain, _ = _chat(client, question, max_tokens=32, seed=1)
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": question}], temperature=0, seed=1, max_tokens=32,
        stream=True, stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert plain.usage.completion_tokens >= 16, plain
    assert len(pieces) >= 4, chunks  # token by token, not one buffered body
    assert "".join(pieces) == plain.choices[0].message.content
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == [plain.choices[0].finish_reason]
    usage = [c.usage for c in chunks if c.usage]
    assert usage and usage[-1].completion_tokens == plain.usage.completion_tokens
    assert all(c.model == MODEL for c in chunks)


def test_killed_replica_fails_over_within_the_retry_policy(fleet: Fleet) -> None:
    client = fleet.client()
    dead, live = fleet.replicas
    dead.process.send_signal(signal.SIGKILL)
    dead.process.wait(30)
    live_before = metric_value(live, SUCCESS)
    retries: list[int] = []
    # At least 6 requests, and on until one has met the dead replica (each first pick does with odds of 1/2).
    while len(retries) < 6 or (sum(retries) == 0 and len(retries) < 16):
        response, headers = _chat(client, f"Name a color, attempt {len(retries)}.", max_tokens=4)
        assert response.choices[0].message.content
        assert headers["x-litellm-model-api-base"] == f"{live.url}/v1"
        retries.append(int(headers["x-litellm-attempted-retries"]))
    assert metric_value(live, SUCCESS) - live_before == len(retries)
    assert sum(retries) >= 1, retries  # the dead replica was tried and its failure hidden
    assert max(retries) <= MAX_RETRIES_FOR_A_DEAD_REPLICA, retries
    assert fleet.proxy.poll() is None


def test_everything_stops_and_nothing_is_left_behind(fleet: Fleet) -> None:
    fleet.proxy.send_signal(signal.SIGTERM)
    assert fleet.proxy.wait(60) is not None
    for replica in fleet.replicas:
        replica.terminate()
    assert all_gone(fleet.tree, 15), f"left behind: {[p for p in fleet.tree if Path(f'/proc/{p}').exists()]}"
