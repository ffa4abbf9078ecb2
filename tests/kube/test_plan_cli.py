"""`pagedserve plan` on the command line: its table, bad input, JSON and chart-values output (rendered by helm)."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pagedserve.cli.main import main
from pagedserve.kube.planner import GIB

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_plan(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["plan", *args])
    return code, out.getvalue(), err.getvalue()


def test_faq_table_reports_kv_room_left() -> None:
    code, out, _ = run_plan("llama-3-70b", "--gpu", "A100-80GB")
    assert code == 0
    assert "Result       2 x A100-80GB per replica" in out
    assert "left after the asked 1" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["not-a-model"], "built-in catalogue"),
        (["llama-3-8b", "--gpu", "B9000"], "unknown --gpu"),
        (["llama-3-8b", "--concurrency", "0"], "concurrency must be >= 1"),
        (["llama-3-8b", "--output", "values"], "--output values needs --gpu"),
        (["llama-3-8b", "--gpu", "T4", "--quantization", "fp8"], "fp8 weights need an Ampere"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(args: list[str], message: str) -> None:
    code, _, err = run_plan(*args)
    assert code == 2
    assert message in err


def test_config_missing_a_field_names_it(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 4096, "num_attention_heads": 32}))
    code, _, err = run_plan(str(tmp_path))
    assert code == 2 and "intermediate_size" in err


def test_no_gpu_summarises_every_gpu_type() -> None:
    code, out, _ = run_plan("llama-3-70b", "--max-model-len", "8192")
    assert code == 0
    lines = {
        line.split()[0]: line for line in out.splitlines() if line and line.split()[0] in ("T4", "A100-80GB")
    }
    assert lines["A100-80GB"].split()[3] == "2"  # GPUs per replica column
    assert "does not fit" in lines["T4"]  # 8 x 15 GiB is under 1.2 x 131 GiB


def test_json_output_has_the_breakdown() -> None:
    code, out, _ = run_plan("llama-3-8b", "--gpu", "A10G", "--output", "json")
    report = json.loads(out)
    assert code == 0 and report["kv_bytes_per_token"] == 131072
    assert report["recommendation"]["tensor_parallel_size"] == 1
    assert report["candidates"][0]["per_gpu"]["runtime_overhead_bytes"] == GIB


def values_for(*args: str) -> dict[str, object]:
    code, out, _ = run_plan(*args, "--output", "values")
    assert code == 0
    return yaml.safe_load(out)


def test_values_fragment_uses_the_chart_keys() -> None:
    values = values_for("llama-3-70b", "--gpu", "A100-80GB", "--concurrency", "2")
    assert values["engine"] == {
        "tensorParallelSize": 2,
        "maxModelLen": 8192,
        "maxNumSeqs": 2,
        "dtype": "bfloat16",
        "quantization": "",
        "gpuMemoryUtilization": 0.9,
    }
    assert values["gpu"] == {"enabled": True, "product": "NVIDIA-A100-SXM4-80GB"}
    assert values["model"] == {"name": "meta-llama/Meta-Llama-3-70B-Instruct"}
    assert values["resources"]["requests"]["memory"] == "74Gi"  # a 66 GiB shard does not fit the chart's 32Gi
    assert "resources" not in values_for("llama-3-8b", "--gpu", "A10G")


def test_cli_subprocess_plan_runs_and_exits_1_when_nothing_fits() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pagedserve.cli.main", "plan", "llama-3-70b", "--gpu", "T4"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "does not fit on up to 8 x T4" in done.stdout
    assert "Traceback" not in done.stderr


@pytest.mark.helm
@pytest.mark.parametrize(
    "args",
    [
        ("mistral-7b", "--gpu", "A10G"),
        ("llama-3-70b", "--gpu", "A100-80GB"),
        ("llama-3-70b", "--gpu", "A100-40GB", "--quantization", "awq", "--concurrency", "4"),
    ],
    ids=["7b-a10g", "70b-fp16-a100-80", "70b-awq-a100-40"],
)
def test_values_fragment_renders_with_helm_template(tmp_path: Path, args: tuple[str, ...]) -> None:
    from tests.deploy.tools import ensure_helm

    values = values_for(*args)
    fragment = tmp_path / "plan-values.yaml"
    fragment.write_text(yaml.safe_dump(values))
    done = subprocess.run(
        [
            str(ensure_helm()),
            "template",
            "plan-test",
            str(REPO_ROOT / "deploy/helm/pagedserve"),
            "-f",
            str(fragment),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    deployment = next(d for d in yaml.safe_load_all(done.stdout) if d and d.get("kind") == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    server = next(
        c for c in pod["containers"] if "--tensor-parallel-size" in (c.get("args") or c.get("command") or [])
    )
    flags = server.get("args") or server.get("command")
    tp = values["engine"]["tensorParallelSize"]  # type: ignore[index]
    assert flags[flags.index("--tensor-parallel-size") + 1] == str(tp)
    assert flags[flags.index("--max-model-len") + 1] == str(values["engine"]["maxModelLen"])  # type: ignore[index]
    assert server["resources"]["limits"]["nvidia.com/gpu"] == tp
    assert pod["nodeSelector"]["nvidia.com/gpu.product"] == values["gpu"]["product"]  # type: ignore[index]


def test_kube_package_imports_no_engine_code() -> None:
    code = (
        "import sys, pkgutil, importlib, pagedserve.kube as k\n"
        "for m in pkgutil.iter_modules(k.__path__): importlib.import_module('pagedserve.kube.' + m.name)\n"
        "bad = [n for n in sys.modules if n == 'torch' or n.split('.')[:2] in (['pagedserve', 'engine'],"
        " ['pagedserve', 'worker'], ['pagedserve', 'models'], ['pagedserve', 'server'])]\n"
        "assert not bad, bad\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
