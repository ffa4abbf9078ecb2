"""--generation-config: the model's generation defaults fill the fields a request leaves unset (max_new_tokens
caps max_tokens), on both endpoints and offline; `vllm` ignores them; bad values are named at start-up."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pagedserve.config import EngineConfig
from pagedserve.engine.input_processor import generation_defaults_for
from pagedserve.model_config import ModelConfig

from .conftest import make_client, wait_ready

MODEL = "SmolLM2-135M-Instruct"


def _config(choice: str) -> EngineConfig:
    return EngineConfig(model=ModelConfig(generation_config=choice))


def test_auto_vllm_and_a_folder(tmp_path: Path) -> None:
    source: Any = SimpleNamespace(
        generation_defaults={"temperature": 0.6, "top_p": 0.9, "max_new_tokens": 64}
    )
    assert generation_defaults_for(_config("auto"), source) == {
        "temperature": 0.6,
        "top_p": 0.9,
        "max_tokens": 64,
    }
    assert generation_defaults_for(_config("vllm"), source) == {}
    (tmp_path / "generation_config.json").write_text(json.dumps({"top_k": 20, "do_sample": True}))
    assert generation_defaults_for(_config(str(tmp_path)), source) == {"top_k": 20}


def test_override_generation_config_goes_over_each_choice(tmp_path: Path) -> None:
    """vLLM's --override-generation-config: merged over the model's values, and alone with --generation-config vllm."""
    source: Any = SimpleNamespace(generation_defaults={"temperature": 0.6, "top_p": 0.9})
    overrides = {"temperature": 0.2, "max_new_tokens": 32}

    def config(choice: str) -> EngineConfig:
        return EngineConfig(model=ModelConfig(generation_config=choice, override_generation_config=overrides))

    assert generation_defaults_for(config("auto"), source) == {
        "temperature": 0.2,
        "top_p": 0.9,
        "max_tokens": 32,
    }
    assert generation_defaults_for(config("vllm"), source) == {"temperature": 0.2, "max_tokens": 32}
    (tmp_path / "generation_config.json").write_text(json.dumps({"top_k": 20}))
    assert generation_defaults_for(config(str(tmp_path)), source) == {
        "top_k": 20,
        **{"temperature": 0.2, "max_tokens": 32},
    }
    bad = EngineConfig(model=ModelConfig(override_generation_config={"temprature": 0.2, "seed": 1}))
    with pytest.raises(ValueError, match="override_generation_config: unknown key.* seed, temprature"):
        generation_defaults_for(bad, source)
    negative = EngineConfig(model=ModelConfig(override_generation_config={"top_p": 0}))
    with pytest.raises(ValueError, match="override_generation_config: top_p"):
        generation_defaults_for(negative, source)


def test_the_flag_takes_a_json_object() -> None:
    from pagedserve.cli.main import build_parser

    args = build_parser().parse_args(["serve", "--override-generation-config", '{"temperature": 0.5}'])
    assert args.override_generation_config == {"temperature": 0.5}
    assert build_parser().parse_args(["serve"]).override_generation_config == {}
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--override-generation-config", "temperature=0.5"])


@pytest.mark.parametrize(
    ("choice", "defaults", "message"),
    [
        ("/nonexistent", {}, "auto, vllm or a folder"),
        ("auto", {"temperature": -1.0}, "generation_config: temperature"),
        ("auto", {"top_p": 0}, "generation_config: top_p"),
    ],
)
def test_bad_generation_configs_are_named(choice: str, defaults: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generation_defaults_for(_config(choice), SimpleNamespace(generation_defaults=defaults))  # type: ignore[arg-type]


def test_server_applies_defaults_to_unset_fields_only() -> None:
    holder: dict[str, Any] = {}
    with make_client(holder=holder) as client:
        wait_ready(client)
        fake = holder["fake"]
        fake.info.default_sampling_params = {"temperature": 0.25, "top_k": 7, "max_tokens": 5}
        seen: list[Any] = []
        add_request = fake.add_request

        def recording(
            request_id: str,
            prompt: Any,
            params: Any,
            arrival_time: float | None = None,
            priority: int = 0,
            lora_request: Any = None,
        ) -> None:
            seen.append(params)
            add_request(request_id, prompt, params, arrival_time, priority, lora_request)

        fake.add_request = recording
        chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
        assert client.post("/v1/chat/completions", json=chat).status_code == 200
        assert (
            client.post(
                "/v1/chat/completions", json={**chat, "temperature": 1.0, "max_tokens": 50}
            ).status_code
            == 200
        )
        assert client.post("/v1/completions", json={"model": MODEL, "prompt": "hi"}).status_code == 200
        assert (
            client.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 3}).status_code
            == 200
        )
    assert [(p.temperature, p.top_k, p.max_tokens) for p in seen] == [
        (0.25, 7, 5),  # everything from the model's defaults; unlimited max_tokens capped
        (1.0, 7, 5),  # the client's temperature wins; its max_tokens is capped
        (0.25, 7, 5),  # completions' default 16, capped
        (0.25, 7, 3),
    ]
