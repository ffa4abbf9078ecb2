"""`pagedserve serve` argument handling (no server started): vLLM spellings, unsupported flags, API key env."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from pagedserve.cli import serve
from pagedserve.cli.main import build_parser


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", *argv])


def test_vllm_flag_spellings_parse() -> None:
    args = parse(
        "my/model", "--host", "127.0.0.1", "--port", "9001", "--served-model-name", "a", "b",
        "--max-model-len", "2048", "--dtype", "float32", "--tensor-parallel-size", "1",
        "--pipeline-parallel-size", "1", "--max-num-seqs", "8", "--max-num-batched-tokens", "512",
        "--no-enable-prefix-caching", "--block-size", "32", "--gpu-memory-utilization", "0.5",
        "--kv-cache-memory-bytes", "256MiB", "--load-format", "gguf", "--api-key", "k",
        "--max-num-queued-reqs", "7", "--shutdown-timeout", "5", "--enforce-eager", "--seed", "3",
        "--chat-template", "t.jinja", "--generation-config", "vllm", "--disable-log-requests",
        "--uvicorn-log-level", "warning", "--quantization", "none",
    )  # fmt: skip
    assert args.model_tag == "my/model" and args.port == 9001 and args.served_model_name == ["a", "b"]
    assert args.kv_cache_memory_bytes == 256 * 2**20 and args.enable_prefix_caching is False
    assert args.max_num_queued_reqs == 7 and args.disable_log_requests is True


def test_flags_of_vllm_manifests_parse_and_pass_the_checks() -> None:
    """Flags common in vLLM's Kubernetes manifests (its production-stack chart, KServe, llm-d), spelled as vLLM's."""
    args = parse(
        "org/model", "--trust-remote-code", "--enable-chunked-prefill", "--download-dir", "/models",
        "--revision", "v1", "--tokenizer-revision", "v2", "--max-logprobs", "-1", "--swap-space", "8",
        "--disable-custom-all-reduce", "--distributed-executor-backend", "mp", "--enable-log-requests",
        "--tokenizer-mode", "hf", "--root-path", "/llm", "--response-role", "bot", "--disable-fastapi-docs",
        "--enable-prompt-tokens-details", "--enable-force-include-usage", "--disable-uvicorn-access-log",
        "--allowed-origins", '["https://app.example"]', "--allowed-methods", '["GET", "POST"]', "--allow-credentials",
        "--chat-template-content-format", "openai", "--runner", "generate", "--task", "generate",
        "--disable-frontend-multiprocessing",
    )  # fmt: skip
    assert serve._check_supported(args) is None
    assert args.trust_remote_code and args.enable_chunked_prefill and args.download_dir == "/models"
    assert (args.revision, args.tokenizer_revision, args.max_logprobs, args.swap_space) == (
        "v1",
        "v2",
        -1,
        8.0,
    )
    assert args.disable_custom_all_reduce and args.distributed_executor_backend == "mp"
    assert (args.tokenizer_mode, args.root_path, args.response_role) == ("hf", "/llm", "bot")
    assert args.enable_log_requests and args.disable_fastapi_docs and args.disable_uvicorn_access_log
    assert args.enable_prompt_tokens_details and args.enable_force_include_usage
    assert parse("--no-enable-chunked-prefill").enable_chunked_prefill is False
    assert (args.allowed_origins, args.allowed_methods) == (["https://app.example"], ["GET", "POST"])
    assert args.allowed_headers == ["*"] and args.allow_credentials  # vLLM's default: any header
    assert args.chat_template_content_format == "openai" and args.runner == args.task == "generate"
    assert parse("--runner", "pooling").runner == "pooling" and parse("--task", "embed").task == "embed"
    with pytest.raises(SystemExit):
        parse("--runner", "draft")  # argparse names the choices
    with pytest.raises(SystemExit):
        parse("--allowed-origins", "https://app.example")  # not a JSON list (vLLM's syntax)


def test_model_is_optional() -> None:
    assert parse().model_tag is None


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--pipeline-parallel-size", "2"], "--pipeline-parallel-size"),
        (["--quantization", "bitsandbytes"], "--quantization bitsandbytes"),
        (["--cpu-offload-gb", "4"], "--cpu-offload-gb is not supported"),
        (["--swap-space", "-1"], "swap_space must be >= 0 (GiB)"),
        (["--max-logprobs", "-2"], "max_logprobs must be >= -1 (-1 for the whole vocabulary)"),
        (["--gpu-memory-utilization", "1.5"], "gpu_memory_utilization must be in (0, 1]"),
        (["--block-size", "0"], "block_size must be >= 1"),
        (["--max-model-len", "0"], "max_model_len must be >= 1"),
        (["--max-num-seqs", "0"], "max_num_seqs must be >= 1"),
        (["--enable-log-requests", "--disable-log-requests"], "contradict"),
        (
            ["--compilation-config", '{"level": 3}'],
            "--compilation-config is not supported: pagedserve runs no",
        ),
        (["--distributed-executor-backend", "ray"], "distributed_executor_backend ray is not supported"),
        (["--distributed-executor-backend", "uni", "--tensor-parallel-size", "2"], "uni runs one process"),
        (["--lora-modules", "sql=/a"], "--lora-modules needs --enable-lora"),
        (["--enable-lora", "--lora-modules", "sql"], "expected name=path"),
        (
            ["--enable-lora", "--max-loras", "2", "--max-cpu-loras", "1"],
            "max_cpu_loras (1) must be >= max_loras",
        ),
        (["--enable-lora", "--max-lora-rank", "0"], "max_lora_rank must be >= 1"),
        (
            ["--enable-lora", "--fully-sharded-loras"],
            "--fully-sharded-loras is not supported: adapters already",
        ),
        (["--max-num-queued-reqs", "0"], "--max-num-queued-reqs"),
        (["--ready-stall-seconds", "0.1"], "--ready-stall-seconds"),
        (
            ["--rope-scaling", '{"rope_type": "yarn"}'],
            "--rope-scaling is not supported: removed from vLLM too",
        ),
    ],
)
def test_unsupported_flags_fail_with_one_line(argv: list[str], fragment: str, capsys: Any) -> None:
    args = parse(*argv)
    assert serve.run(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fragment in err and err.startswith("pagedserve serve: error:")


def test_bad_byte_size_is_an_argparse_error() -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse("--kv-cache-memory-bytes", "lots")
    assert exit_info.value.code == 2


@pytest.mark.parametrize("variable", serve.API_KEY_ENV_VARS)
def test_api_key_from_environment(variable: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in serve.API_KEY_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, "from-env")
    captured: dict[str, Any] = {}

    async def fake_serve(engine_config: Any, server_config: Any, in_process: bool) -> int:
        captured["engine"], captured["server"] = engine_config, server_config
        return 0

    monkeypatch.setattr(serve, "_serve", fake_serve)
    assert serve.run(parse("--max-model-len", "1024")) == 0
    assert captured["server"].api_key == "from-env"
    assert captured["server"].served_model_name == ["SmolLM2-135M-Instruct"]
    assert captured["engine"].model.max_model_len == 1024 and captured["engine"].model.model is None
    assert serve.run(parse("some/dir", "--api-key", "flag")) == 0
    assert captured["server"].api_key == "flag" and captured["server"].served_model_name == ["some/dir"]
    assert captured["engine"].model.model == "some/dir"


def test_speculative_config_parses_as_vllms(monkeypatch: pytest.MonkeyPatch) -> None:
    captured: dict[str, Any] = {}

    async def fake_serve(engine_config: Any, server_config: Any, in_process: bool) -> int:
        captured["engine"] = engine_config
        return 0

    monkeypatch.setattr(serve, "_serve", fake_serve)
    assert serve.run(parse("--speculative-config", '{"method": "ngram", "num_speculative_tokens": 3}')) == 0
    spec = captured["engine"].speculative
    assert (spec.num_speculative_tokens, spec.lookup_min, spec.lookup_max) == (3, 5, 5)  # vLLM's defaults
    assert serve.run(parse("--speculative-config", '{"model": "[ngram]", "num_speculative_tokens": 2, '
                           '"prompt_lookup_max": 3}')) == 0  # fmt: skip
    spec = captured["engine"].speculative
    assert (spec.method, spec.lookup_min, spec.lookup_max) == ("ngram", 3, 3)
    assert spec.disable_by_batch_size is None
    assert (
        serve.run(parse("--speculative-config", '{"num_speculative_tokens": 2, "disable_by_batch_size": 4}'))
        == 0
    )
    assert captured["engine"].speculative.disable_by_batch_size == 4
    assert serve.run(parse()) == 0 and captured["engine"].speculative is None


def test_hf_overrides_parse_as_vllms(monkeypatch: pytest.MonkeyPatch) -> None:
    captured: dict[str, Any] = {}

    async def fake_serve(engine_config: Any, server_config: Any, in_process: bool) -> int:
        captured["engine"] = engine_config
        return 0

    monkeypatch.setattr(serve, "_serve", fake_serve)
    yarn = '{"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}}'
    assert serve.run(parse("--hf-overrides", yarn)) == 0
    assert captured["engine"].model.hf_overrides["rope_scaling"]["factor"] == 4.0
    with pytest.raises(SystemExit):
        parse("--hf-overrides", "rope_scaling=yarn")  # not a JSON object (vLLM's syntax)


def test_disable_hybrid_kv_cache_manager_parses_as_vllms(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit-level: the serving loop is replaced by a capture (the flag's effect runs in test_hybrid_kv_cache.py)."""
    captured: dict[str, Any] = {}

    async def fake_serve(engine_config: Any, server_config: Any, in_process: bool) -> int:
        captured["engine"] = engine_config
        return 0

    monkeypatch.setattr(serve, "_serve", fake_serve)
    assert serve.run(parse("--disable-hybrid-kv-cache-manager")) == 0
    assert captured["engine"].cache.disable_hybrid_kv_cache_manager is True
    assert serve.run(parse()) == 0 and captured["engine"].cache.disable_hybrid_kv_cache_manager is False


def test_lora_flags_parse_as_vllms(monkeypatch: pytest.MonkeyPatch) -> None:
    captured: dict[str, Any] = {}

    async def fake_serve(engine_config: Any, server_config: Any, in_process: bool) -> int:
        captured.update(engine=engine_config, server=server_config)
        return 0

    monkeypatch.setattr(serve, "_serve", fake_serve)
    argv = ["--enable-lora", "--lora-dtype", "auto", "--max-loras", "2", "--max-lora-rank", "64", "--max-cpu-loras", "4", "--lora-modules",
            "sql=/adapters/sql", '{"name": "chat", "path": "/adapters/chat", "base_model_name": "m"}']  # fmt: skip
    assert serve.run(parse(*argv)) == 0
    lora = captured["engine"].lora
    assert (lora.enable_lora, lora.max_loras, lora.max_lora_rank, lora.max_cpu_loras) == (True, 2, 64, 4)
    assert captured["server"].lora_modules == argv[-2:]
    assert serve.run(parse()) == 0 and captured["engine"].lora.enable_lora is False
    with pytest.raises(SystemExit):  # 16-bit adapter storage is not offered: argparse names the choices
        parse("--enable-lora", "--lora-dtype", "bfloat16")


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ('{"method": "eagle", "model": "x", "num_speculative_tokens": 3}', "speculative_config.model"),
        ('{"method": "eagle", "num_speculative_tokens": 3}', "'eagle' is not supported"),
        ('{"method": "ngram"}', "num_speculative_tokens is required"),
        ('{"method": "ngram", "num_speculative_tokens": 99}', "num_speculative_tokens must be"),
        (
            '{"num_speculative_tokens": 2, "prompt_lookup_min": 4, "prompt_lookup_max": 2}',
            "prompt_lookup_min",
        ),
        ("ngram", "must be a JSON object"),
        ('{"num_speculative_tokens": 2, "disable_by_batch_size": 1}', "disable_by_batch_size must be"),
    ],
)
def test_bad_speculative_config_is_an_argparse_error(value: str, fragment: str, capsys: Any) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse("--speculative-config", value)
    assert exit_info.value.code == 2 and fragment in capsys.readouterr().err


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"runner": "draft"}, "runner must be one of auto, generate, pooling, got 'draft'"),
        ({"tokenizer_mode": "mistral"}, "tokenizer_mode must be one of auto, hf"),
        ({"kv_cache_dtype": "fp8_e5m2"}, "kv_cache_dtype must be one of auto, bfloat16, fp8, fp8_e4m3"),
        ({"scheduling_policy": "lifo"}, "scheduling_policy must be one of fcfs, priority"),
        ({"hf_overrides": lambda config: config}, "hf_overrides must be a dict"),
    ],
)
def test_llm_keyword_arguments_outside_their_choices_are_named(kwargs: dict[str, str], message: str) -> None:
    """The LLM class gets no argparse: its Literal-typed arguments are checked by config.check_choices."""
    from pagedserve.entrypoints.llm import build_engine_config

    with pytest.raises(ValueError, match=message):
        build_engine_config(**kwargs)


def test_flag_names_take_vllms_underscore_spelling() -> None:
    """vLLM's parser takes `--max_num_batched_tokens` for `--max-num-batched-tokens` (its Kubernetes example
    writes it so); only names change, values stay as written."""
    from pagedserve.cli.main import dash_flag_names

    argv = [
        "serve",
        "m",
        "--max_num_batched_tokens",
        "1024",
        "--served_model_name=a_b",
        "--chat-template",
        "x_y",
    ]
    assert dash_flag_names(argv) == [
        "serve", "m", "--max-num-batched-tokens", "1024", "--served-model-name=a_b", "--chat-template", "x_y",
    ]  # fmt: skip


def test_vllms_older_entrypoint_module_runs_pagedserve_serve() -> None:
    """`python -m vllm.entrypoints.openai.api_server` in our images (deploy/docker/vllm-compat on the venv's path):
    pagedserve serve with the same arguments, underscores and all; tests/deploy/test_image_build.py runs it in the
    built image."""
    import os
    import subprocess
    import sys

    from tests.deploy.tools import REPO_ROOT

    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "deploy" / "docker" / "vllm-compat")}
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    shown = subprocess.run([*command, "--help"], env=env, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and shown.stdout.startswith("usage: pagedserve serve"), shown.stderr[-2000:]
    refused = subprocess.run(
        [*command, "--max_num_seqs", "0"], env=env, capture_output=True, text=True, timeout=120
    )
    assert refused.returncode == 2 and "max_num_seqs must be >= 1" in refused.stderr, refused.stderr[-2000:]


def test_sizes_take_vllms_human_readable_numbers() -> None:
    """vLLM's human_readable_int: k/m/g count in thousands, K/M/G in 1024s, for --max-model-len,
    --max-num-batched-tokens and --kv-cache-memory-bytes; our byte units (MiB, GB) keep their meaning."""
    args = parse("--max-model-len", "32k", "--max-num-batched-tokens", "8K", "--kv-cache-memory-bytes", "4G")
    assert (args.max_model_len, args.max_num_batched_tokens, args.kv_cache_memory_bytes) == (
        32000,
        8192,
        4 * 2**30,
    )
    assert parse("--max-model-len", "25.6k").max_model_len == 25600
    assert parse("--kv-cache-memory-bytes", "4g").kv_cache_memory_bytes == 4 * 10**9
    assert parse("--kv-cache-memory-bytes", "256MiB").kv_cache_memory_bytes == 256 * 2**20
    assert parse("--kv-cache-memory-bytes", "1GB").kv_cache_memory_bytes == 10**9


@pytest.mark.parametrize("value", ["auto", "-1", "1.5", "lots"])
def test_max_model_len_refuses_what_it_cannot_honour(value: str, capsys: Any) -> None:
    """vLLM's `auto` (the longest length the KV memory fits) is not implemented: refused by name, not read as the
    model's maximum."""
    with pytest.raises(SystemExit) as exit_info:
        parse("--max-model-len", value)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--max-model-len" in err and ("fit-to-memory" in err or "not an integer" in err)


def test_limit_mm_per_prompt_accepts_text_only(capsys: Any) -> None:
    """vLLM manifests serving Gemma 3 text-only say --limit-mm-per-prompt '{"image": 0}': what pagedserve does anyway.
    Any other limit is an argparse error naming the modality."""
    assert parse("--limit-mm-per-prompt", '{"image": 0, "video": 0}').limit_mm_per_prompt == {
        "image": 0,
        "video": 0,
    }
    assert parse("--limit-mm-per-prompt", '{"image": {"count": 0}}').limit_mm_per_prompt == {
        "image": {"count": 0}
    }
    for bad in ('{"image": 2}', "image=0", "[0]"):
        with pytest.raises(SystemExit):
            parse("--limit-mm-per-prompt", bad)
    assert "image: 2: pagedserve serves text only" in capsys.readouterr().err
