"""`bench throughput` and `bench latency`: the engine in-process on the bundled model, a few short requests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pagedserve.cli.main import main

pytestmark = [pytest.mark.model, pytest.mark.slow]


def test_bench_throughput_preset_overridden_small(tmp_path: Path, capsys) -> None:
    out = tmp_path / "throughput.json"
    code = main(
        ["bench", "throughput", "--preset", "offline-32x64", "--num-prompts", "6", "--output-len", "8",
         "--output-json", str(out)]
    )  # fmt: skip
    assert code == 0
    assert "output tokens/s" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["num_requests"] == 6 and result["output_tokens"] == 48  # ignore_eos: exactly 8 each
    assert result["output_tokens_per_s"] > 0
    # The engine reports blocks in use; with 6 short requests the busiest step is well defined.
    assert result["kv_busiest_used_blocks"] > 0
    assert 0.3 < result["kv_utilisation"] <= 1.0


def test_bench_throughput_takes_the_engine_s_quantization_and_kv_cache_dtype(capsys) -> None:
    """vLLM's `bench throughput` takes every engine flag: these two choose what a GGUF run measures."""
    args = ["bench", "throughput", "--preset", "offline-32x64", "--num-prompts", "2", "--output-len", "4"]
    assert main([*args, "--quantization", "none", "--kv-cache-dtype", "bfloat16", "--dtype", "float32"]) == 0
    assert "output tokens/s" in capsys.readouterr().out
    with pytest.raises(SystemExit) as refused:  # serve's choices (config.KVCacheDType), refused by argparse
        main([*args, "--kv-cache-dtype", "fp8_e5m2"])
    assert refused.value.code == 2
    assert "invalid choice: 'fp8_e5m2'" in capsys.readouterr().err


def test_bench_throughput_single_stream_reports_decode_speed(capsys) -> None:
    code = main(["bench", "throughput", "--preset", "single-stream", "--output-len", "8"])
    assert code == 0
    assert "Single-stream decode:" in capsys.readouterr().out


def test_bench_latency(tmp_path: Path, capsys) -> None:
    out = tmp_path / "latency.json"
    code = main(
        ["bench", "latency", "--batch-size", "2", "--input-len", "8", "--output-len", "4", "--num-iters", "2",
         "--num-iters-warmup", "1", "--output-json", str(out)]
    )  # fmt: skip
    assert code == 0
    assert "Avg latency:" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert len(result["latencies_s"]) == 2 and result["avg_latency"] > 0
