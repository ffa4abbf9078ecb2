"""A vLLM manifest's command line, unchanged, on a real server: the model named by its Hub id (org/name) and found in
a Hugging Face cache on disk (--download-dir; nothing downloaded), with the flags such manifests carry
(--trust-remote-code, --no-enable-chunked-prefill, --max-logprobs, --enable-prompt-tokens-details, --root-path,
--disable-custom-all-reduce, --distributed-executor-backend mp, --swap-space, ...), half of them from a vLLM
config file (--config), through the openai SDK.

The model is a tiny random-weight Qwen2 folder with the bundled tokenizer, laid out as huggingface_hub lays out its
cache (blobs, a snapshot of links, refs/main)."""

from __future__ import annotations

import pathlib

import httpx
import openai
import pytest

from tests.hub_cache_writer import add_snapshot
from tests.tiny_models import write_tiny_qwen

from .conftest import ServerProcess, launch

pytestmark = [pytest.mark.server, pytest.mark.slow]

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def manifest_server(tmp_path_factory: pytest.TempPathFactory) -> ServerProcess:
    folder = tmp_path_factory.mktemp("tiny-qwen2")
    write_tiny_qwen(folder, version=2)
    cache = tmp_path_factory.mktemp("hf-cache")
    add_snapshot(cache, "org/tiny-chat", folder, COMMIT, refs=("main",))
    # Half the flags in a vLLM config file (a ConfigMap), the rest on the command line, which wins where both say.
    config = tmp_path_factory.mktemp("configmap") / "config.yaml"
    config.write_text(
        f"model: org/tiny-chat\ndownload-dir: {cache}\ntrust-remote-code: true\nenable-chunked-prefill: false\n"
        "max_logprobs: 5\nenable-prompt-tokens-details: true\nroot-path: /llm\nswap-space: 4\n"
    )
    server = launch(
        tmp_path_factory.mktemp("manifest-server"), "--config", str(config), "--max-logprobs", "3",
        "--disable-custom-all-reduce", "--distributed-executor-backend", "mp", "--enable-log-requests",
        "--tokenizer-mode", "auto", "--dtype", "float32",
    )  # fmt: skip
    try:
        server.wait_ready()
        yield server
    finally:
        server.terminate()


def test_the_hub_id_is_served_from_the_cache_under_its_own_name(manifest_server: ServerProcess) -> None:
    client = openai.OpenAI(base_url=f"{manifest_server.url}/v1", api_key="none")
    [model] = client.models.list().data
    assert model.id == "org/tiny-chat"  # vLLM's default served name: the --model argument as given
    assert COMMIT in manifest_server.log() or "tiny-chat" in manifest_server.log()
    reply = client.chat.completions.create(
        model="org/tiny-chat", messages=[{"role": "user", "content": "Hi"}], max_tokens=5, temperature=0
    )
    assert reply.usage.completion_tokens == 5 and reply.choices[0].message.role == "assistant"


def test_cached_prompt_tokens_are_reported_and_logprobs_are_capped(manifest_server: ServerProcess) -> None:
    client = openai.OpenAI(base_url=f"{manifest_server.url}/v1", api_key="none")
    prompt = "A prompt long enough to fill a few blocks of sixteen tokens: " + "alpha beta gamma delta " * 12
    first = client.completions.create(model="org/tiny-chat", prompt=prompt, max_tokens=2, temperature=0)
    again = client.completions.create(model="org/tiny-chat", prompt=prompt, max_tokens=2, temperature=0)
    assert (
        getattr(first.usage, "prompt_tokens_details", None) is None
    )  # nothing cached: no details (vLLM's rule)
    cached = again.usage.prompt_tokens_details.cached_tokens
    assert 16 <= cached < again.usage.prompt_tokens and cached % 16 == 0
    assert again.choices[0].text == first.choices[0].text
    with pytest.raises(openai.BadRequestError, match="Requested sample logprobs of 4, which is greater than max "
                       "allowed: 3"):  # fmt: skip
        client.completions.create(model="org/tiny-chat", prompt="Hi", max_tokens=2, logprobs=4)
    ok = client.completions.create(model="org/tiny-chat", prompt="Hi", max_tokens=2, logprobs=3)
    assert 3 <= len(ok.choices[0].logprobs.top_logprobs[0]) <= 4  # the top 3, and the sampled token (vLLM's)


def test_root_path_is_the_prefix_the_api_documents(manifest_server: ServerProcess) -> None:
    schema = httpx.get(f"{manifest_server.url}/openapi.json", timeout=30).json()
    assert schema["servers"] == [{"url": "/llm"}]
    assert httpx.get(f"{manifest_server.url}/v1/models", timeout=30).status_code == 200


def test_a_hub_id_the_cache_lacks_stops_the_start_with_where_it_looked(
    tmp_path: pathlib.Path, start_server
) -> None:
    server = start_server("org/absent", "--download-dir", str(tmp_path / "empty"), wait=False)
    assert server.process.wait(timeout=300) == 1
    log = server.log()
    assert "'org/absent' is neither a local path nor in the local Hugging Face cache" in log
    assert str(tmp_path / "empty" / "models--org--absent") in log
