"""LoRA adapters on a real server (the bundled Q4_1 model, its q|k|v and gate|up layers kept in GGUF blocks):
vLLM's --enable-lora / --lora-modules, the adapter chosen by the request's `model` through the openai SDK, /v1/models,
vLLM's runtime load and unload endpoints (VLLM_ALLOW_RUNTIME_LORA_UPDATING) and vllm:lora_requests_info.

That an adapter's output is the merged checkpoint's is tests/integration/test_lora.py's (float models). Here: an
adapter whose B is zero (what PEFT initialises) leaves the served text exactly the base model's, a random one changes
it, and requests for the base model and two adapters running in one batch each get the text they get alone.
"""

from __future__ import annotations

import concurrent.futures
import json
import pathlib
from collections.abc import Callable
from types import SimpleNamespace

import httpx
import pytest

from tests.lora_writer import write_adapter

from .conftest import ServerProcess, metric_value

pytestmark = [pytest.mark.server, pytest.mark.slow, pytest.mark.model]

# SmolLM2-135M's shapes (the bundled model): a wrong one here makes the server refuse the adapter at start-up.
SMOLLM2 = SimpleNamespace(
    hidden_size=576, num_attention_heads=9, num_key_value_heads=3, head_dim=64, intermediate_size=1536,
    num_hidden_layers=30,
)  # fmt: skip
PROMPT = "The three most useful things to pack for a long hike are"


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pathlib.Path]:
    root = tmp_path_factory.mktemp("adapters")
    folders = {"sql": root / "sql", "chat": root / "chat", "fresh": root / "fresh"}
    write_adapter(folders["sql"], SMOLLM2, rank=8, alpha=16, seed=1, std=0.05)
    write_adapter(folders["chat"], SMOLLM2, targets=("q_proj", "v_proj"), rank=4, alpha=8, seed=2, std=0.1)
    write_adapter(folders["fresh"], SMOLLM2, rank=8, zero_b=True)
    return folders


@pytest.fixture(scope="module")
def lora_server(adapters: dict[str, pathlib.Path], tmp_path_factory: pytest.TempPathFactory) -> ServerProcess:
    from .conftest import launch

    server = launch(
        tmp_path_factory.mktemp("lora-server"), "--enable-lora", "--max-loras", "2", "--max-cpu-loras", "2",
        "--lora-modules", f"sql={adapters['sql']}",
        json.dumps({"name": "fresh", "path": str(adapters["fresh"]), "base_model_name": "smol"}),
        env={"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "true"},
    )  # fmt: skip
    try:
        server.wait_ready()
        yield server
    finally:
        server.terminate()


def _client(server: ServerProcess):
    import openai

    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=120)


def complete(server: ServerProcess, model: str, stream: bool = False) -> str:
    kwargs = dict(model=model, prompt=PROMPT, max_tokens=24, temperature=0)
    if not stream:
        return _client(server).completions.create(**kwargs).choices[0].text
    chunks = _client(server).completions.create(**kwargs, stream=True)
    return "".join(chunk.choices[0].text for chunk in chunks if chunk.choices)


def test_models_lists_the_adapters_with_their_folder_and_parent(lora_server, adapters):
    data = _client(lora_server).models.list().data
    base = data[0].id
    by_id = {model.id: model for model in data}
    assert set(by_id) == {base, "sql", "fresh"}
    assert (by_id["sql"].root, by_id["sql"].parent) == (str(adapters["sql"]), base)
    assert (by_id["fresh"].root, by_id["fresh"].parent) == (str(adapters["fresh"]), "smol")


def test_the_request_model_picks_the_adapter(lora_server):
    base = _client(lora_server).models.list().data[0].id
    plain = complete(lora_server, base)
    assert complete(lora_server, "fresh") == plain  # B = 0: the adapter adds nothing
    tuned = complete(lora_server, "sql")
    assert tuned != plain
    assert complete(lora_server, "sql", stream=True) == tuned
    chat = _client(lora_server).chat.completions.create(
        model="sql", messages=[{"role": "user", "content": "Say hi"}], max_tokens=8, temperature=0
    )
    assert chat.model == "sql" and chat.choices[0].message.content
    import openai

    with pytest.raises(openai.NotFoundError, match="The model `nope` does not exist"):
        complete(lora_server, "nope")


# One bfloat16 step of the logits at their magnitude here (~16-32): a batch's matrix products round differently
# from one row's (the multi-row GEMVs, the float32 panels past 8 rows), by about that much.
NEAR_TIE = 0.13


def tokens_and_top(server: ServerProcess, model: str) -> tuple[list[str], list[dict[str, float]]]:
    choice = (
        _client(server)
        .completions.create(model=model, prompt=PROMPT, max_tokens=24, temperature=0, logprobs=2)
        .choices[0]
    )
    return choice.logprobs.tokens, choice.logprobs.top_logprobs


def same_up_to_a_near_tie(one, other) -> bool:
    """Equal tokens, or equal up to a step where both runs' two best tokens are the same pair within NEAR_TIE (a
    greedy choice rounding may flip; after it the texts may part)."""
    (tokens, top), (other_tokens, other_top) = one, other
    for step, (token, other_token) in enumerate(zip(tokens, other_tokens)):
        if token != other_token:
            pair = {token, other_token}
            return all(
                set(best) == pair and abs(best[token] - best[other_token]) <= NEAR_TIE
                for best in (top[step], other_top[step])
            )
    return len(tokens) == len(other_tokens)


def test_base_and_adapter_requests_batched_together_get_their_own_text(lora_server):
    """Each request of a mixed batch gets its own adapter's greedy text: the text it gets alone, or the same up to a
    near tie (2026-12-07, bfloat16: the base model's ' backpack' / ' map' 0.125 apart alone, level in a batch)."""
    base = _client(lora_server).models.list().data[0].id
    alone = {model: tokens_and_top(lora_server, model) for model in (base, "sql", "fresh")}
    assert alone[base][0] != alone["sql"][0]  # the adapter changes the text, so a mix-up would show
    assert not same_up_to_a_near_tie(alone[base], alone["sql"])
    models = [base, "sql", "fresh"] * 3
    with concurrent.futures.ThreadPoolExecutor(len(models)) as pool:
        together = list(pool.map(lambda model: tokens_and_top(lora_server, model), models))
    for model, got in zip(models, together):
        assert same_up_to_a_near_tie(got, alone[model]), model
    labels = {"max_lora": "2"}
    assert metric_value(lora_server, "vllm:lora_requests_info", **labels) > 1e9  # the time of its last update


def test_adapters_load_and_unload_at_run_time(lora_server, adapters, tmp_path):
    url = lora_server.url
    bad = httpx.post(f"{url}/v1/load_lora_adapter", json={"lora_name": "chat", "lora_path": str(tmp_path)})
    assert bad.status_code == 400 and "has no adapter_config.json" in bad.json()["error"]["message"]
    good = httpx.post(
        f"{url}/v1/load_lora_adapter", json={"lora_name": "chat", "lora_path": str(adapters["chat"])}
    )
    assert good.status_code == 200 and good.text == "Success: LoRA adapter 'chat' added successfully."
    again = httpx.post(
        f"{url}/v1/load_lora_adapter", json={"lora_name": "chat", "lora_path": str(adapters["chat"])}
    )
    assert again.status_code == 400 and "already been loaded" in again.json()["error"]["message"]
    assert "chat" in {model.id for model in _client(lora_server).models.list().data}
    assert complete(lora_server, "chat") not in (complete(lora_server, "sql"), complete(lora_server, "fresh"))
    gone = httpx.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": "chat"})
    assert gone.status_code == 200
    assert httpx.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": "chat"}).status_code == 404
    import openai

    with pytest.raises(openai.NotFoundError):
        complete(lora_server, "chat")


def test_a_bad_lora_module_stops_the_start_and_runtime_updates_need_the_variable(
    start_server: Callable[..., ServerProcess], tmp_path: pathlib.Path, adapters
) -> None:
    broken = start_server("--enable-lora", "--lora-modules", f"sql={tmp_path}", wait=False)
    assert broken.process.wait(120) == 1
    assert "--lora-modules sql: LoRA adapter" in broken.log() and "has no adapter_config.json" in broken.log()
    plain = start_server("--enable-lora", "--lora-modules", f"sql={adapters['sql']}", "--max-lora-rank", "8")
    response = httpx.post(f"{plain.url}/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": "/x"})
    assert response.status_code == 404  # not served without VLLM_ALLOW_RUNTIME_LORA_UPDATING, as vLLM's
    assert complete(plain, "sql")
