"""`bench serve` against small real HTTP servers (tests/bench/conftest.py): counts, timings and failures."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from pagedserve.benchmark.datasets import SampleRequest
from pagedserve.benchmark.serve import ServeLoad, ServeTarget, compute_result, run_load
from pagedserve.cli.main import main


def _requests(count: int, output_len: int = 5) -> list[SampleRequest]:
    return [
        SampleRequest(prompt=f"prompt {i}", prompt_len=3, expected_output_len=output_len)
        for i in range(count)
    ]


def _run(url: str, endpoint: str, count: int, tokenizer: Any, concurrency: int | None = 4) -> dict[str, Any]:
    target = ServeTarget(base_url=url, model="stub-model", endpoint=endpoint, ignore_eos=True)
    load = ServeLoad(max_concurrency=concurrency)
    run = asyncio.run(run_load(target, _requests(count), load, initial_test=False, show_progress=False))
    count_tokens = lambda text: len(tokenizer(text, add_special_tokens=False).input_ids)  # noqa: E731
    _, result = compute_result(
        run, target, load, percentiles=[50, 99], goodput_slos_ms={}, count_tokens=count_tokens,
        model_id="stub-model", tokenizer_id="bundled",
    )  # fmt: skip
    return result


@pytest.mark.parametrize("endpoint", ["/v1/completions", "/v1/chat/completions"])
def test_stream_with_usage_chunk(stub_server, bundled_tokenizer, endpoint: str) -> None:
    server = stub_server(send_usage=True, first_token_delay_s=0.03)
    result = _run(server.url, endpoint, 12, bundled_tokenizer)
    assert (result["completed"], result["failed"]) == (12, 0)
    assert result["total_output_tokens"] == 60 and result["output_lens"] == [5] * 12
    assert result["total_input_tokens"] == 36
    assert result["output_len_source"] == "usage"
    # TTFT waits for the first text, not for the chat role chunk that the stub sends at once.
    assert min(result["ttfts"]) >= 0.03
    assert all(len(itl) == 4 for itl in result["itls"])
    assert result["max_concurrent_requests"] <= 4
    body = server.behaviour.requests[0]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["repetition_penalty"] == 1.0 and body["ignore_eos"] is True and body["temperature"] == 0.0
    if endpoint == "/v1/chat/completions":
        assert body["messages"][0]["role"] == "user" and body["messages"][0]["content"].startswith("prompt ")
        assert body["max_completion_tokens"] == 5
    else:
        assert body["max_tokens"] == 5 and body["prompt"].startswith("prompt ")


def test_stream_without_usage_chunk_counts_tokens_with_the_tokenizer(stub_server, bundled_tokenizer) -> None:
    server = stub_server(send_usage=False)
    result = _run(server.url, "/v1/completions", 8, bundled_tokenizer)
    assert (result["completed"], result["failed"]) == (8, 0)
    assert result["output_lens"] == [5] * 8  # " tok" x 5 is five tokens of the bundled tokenizer
    assert result["output_len_source"] == "tokenizer"
    assert result["mean_tpot_ms"] > 0


def test_failed_requests_are_counted_with_reasons(stub_server, bundled_tokenizer) -> None:
    # Requests 3, 6, 9, 12 answer HTTP 500; 4 and 8 break mid-stream with an error event.
    server = stub_server(fail_every=3, stream_error_every=4)
    result = _run(server.url, "/v1/completions", 12, bundled_tokenizer)
    assert (result["completed"], result["failed"]) == (6, 6)
    assert result["failure_reasons"] == {"HTTP 500: stub overloaded": 4, "stream error: engine died": 2}
    assert result["total_output_tokens"] == 30
    assert sorted(result["output_lens"]) == [0] * 6 + [5] * 6
    assert sum(1 for e in result["errors"] if e) == 6


def test_connection_refused_is_a_failed_request_not_a_crash(bundled_tokenizer) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = _run(f"http://127.0.0.1:{port}", "/v1/completions", 3, bundled_tokenizer)
    assert (result["completed"], result["failed"]) == (0, 3)
    assert all(reason.startswith("Client") for reason in result["failure_reasons"])


def test_cli_writes_vllm_result_file_and_plot(
    stub_server, tmp_path: Path, vllm_result_keys, png_check, capsys
) -> None:
    server = stub_server(send_usage=True)
    result_path, plot_path = tmp_path / "result.json", tmp_path / "run.png"
    code = main(
        [
            "bench", "serve", "--base-url", server.url, "--num-prompts", "10", "--input-len", "16",
            "--output-len", "6", "--max-concurrency", "5", "--request-rate", "200", "--ignore-eos",
            "--goodput", "ttft:5000", "tpot:1000", "--percentiles", "50,90,99",
            "--result-json", str(result_path), "--plot", str(plot_path), "--disable-tqdm",
        ]
    )  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "Serving Benchmark Result" in out and "Request goodput (req/s):" in out
    result = json.loads(result_path.read_text())
    for key in vllm_result_keys + ["p50_ttft_ms", "p90_itl_ms"]:
        assert key in result, key
    assert result["completed"] == 10 and result["failed"] == 0
    assert result["model_id"] == "stub-model"  # learned from /v1/models
    assert result["request_goodput"] == pytest.approx(result["request_throughput"])
    assert result["input_lens"] == [16] * 10  # random prompts re-tokenized to the exact length
    # One untimed initial test request, then the ten.
    assert len(server.behaviour.requests) == 11
    png_check(plot_path)


def test_cli_sweep_reports_levels_and_capacity(stub_server, tmp_path: Path, png_check, capsys) -> None:
    server = stub_server(first_token_delay_s=0.01)
    result_path, plot_path = tmp_path / "sweep.json", tmp_path / "sweep.png"
    code = main(
        [
            "bench", "sweep", "--base-url", server.url, "--concurrency", "1,4", "--num-prompts", "8",
            "--min-prompts", "2", "--prompts-per-concurrency", "2", "--input-len", "8", "--output-len", "3",
            "--slo", "p99_ttft_ms:5000", "--result-json", str(result_path), "--plot", str(plot_path),
            "--disable-tqdm",
        ]
    )  # fmt: skip
    assert code == 0
    sweep = json.loads(result_path.read_text())
    assert [r["concurrency"] for r in sweep["rows"]] == [1, 4]
    assert [r["num_prompts"] for r in sweep["rows"]] == [2, 8]
    assert all(r["meets_slo"] for r in sweep["rows"]) and sweep["capacity"] == 4
    assert "highest concurrency meeting it = 4" in capsys.readouterr().out
    png_check(plot_path)


def test_cli_fails_clearly_when_the_initial_test_request_fails(stub_server, capsys) -> None:
    server = stub_server(fail_every=1)
    code = main(["bench", "serve", "--base-url", server.url, "--num-prompts", "2", "--input-len", "4"])
    assert code == 2
    err = capsys.readouterr().err
    assert "initial test request" in err and "HTTP 500: stub overloaded" in err


def test_cli_fails_clearly_when_no_server_listens(capsys) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = main(["bench", "serve", "--base-url", f"http://127.0.0.1:{port}", "--num-prompts", "2"])
    assert code == 2
    assert "cannot reach" in capsys.readouterr().err


def test_cli_rejects_bad_flags(stub_server, capsys) -> None:
    server = stub_server()
    assert main(["bench", "serve", "--base-url", server.url, "--goodput", "latency:3"]) == 2
    assert "--goodput" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "serve", "--request-rate", "0"])
    with pytest.raises(SystemExit):
        main(["bench", "serve", "--max-concurrency", "-2"])
