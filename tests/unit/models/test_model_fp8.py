"""FP8 as vLLM's `--quantization fp8` runs it: a float checkpoint's linear layers quantized to float8 e4m3 at load
(one scale a layer), and checkpoints saved that way (quantization_config quant_method "fp8", as vLLM's and
AutoFP8's writers save them: float8_e4m3fn weights with a scalar weight_scale each). The two load to the same
weights when the checkpoint holds the scales online quantization computes; logits follow the float model within
float8's rounding. What the engine does not run is refused by name."""

from __future__ import annotations

import json
import pathlib

import pytest
import torch
import torch.nn.functional as F
from model_steps import load_model, logits_of
from safetensors.torch import load_file, save_file
from tests.ct_writer import tiny_llama

from pagedserve.layers.ct_quant import FP8_MAX
from pagedserve.layers.linear import LinearBase, quantize_linears_fp8
from pagedserve.models.fp8_config import parse_fp8_config
from pagedserve.models.loader import resolve_model_source, resolve_quantization

# Checkpoint tensors that the engine merges into one layer: vLLM's online FP8 gives each merged layer one scale.
MERGED = {"self_attn": ("q_proj", "k_proj", "v_proj"), "mlp": ("gate_proj", "up_proj")}
SINGLE = {"self_attn": ("o_proj",), "mlp": ("down_proj",)}


@pytest.fixture(scope="module")
def float_folder(tmp_path_factory) -> pathlib.Path:
    folder = tmp_path_factory.mktemp("float")
    tiny_llama().save_pretrained(folder)
    return folder


def write_fp8_checkpoint(
    float_folder: pathlib.Path, folder: pathlib.Path, input_scales: bool = False, **config: object
) -> pathlib.Path:
    """The float checkpoint saved as an fp8 one: each merged group (q|k|v, gate|up) and each other layer with one
    scale, its absmax / 448 (the scales online quantization computes), `ignored_layers` left in float.
    input_scales: activation_scheme "static", each layer's input_scale 0.01 times its place in its group (q 0.01,
    k 0.02, v 0.03; gate 0.01, up 0.02; o and down 0.01)."""
    folder.mkdir()
    tensors = load_file(float_folder / "model.safetensors")
    ignored = set(config.get("ignored_layers", []))  # type: ignore[arg-type]
    layers = {name.split(".")[2] for name in tensors if name.startswith("model.layers.")}
    for index in layers:
        for block in ("self_attn", "mlp"):
            for group in (MERGED[block], *((name,) for name in SINGLE[block])):
                modules = [f"model.layers.{index}.{block}.{name}" for name in group]
                if any(module in ignored for module in modules):
                    continue
                weights = [tensors[f"{module}.weight"].float() for module in modules]
                scale = (max(w.abs().amax() for w in weights) / FP8_MAX).clamp(min=1e-12)
                for place, (module, weight) in enumerate(zip(modules, weights), start=1):
                    fp8 = (weight / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
                    tensors[f"{module}.weight"] = fp8
                    tensors[f"{module}.weight_scale"] = scale.reshape(()).clone()
                    if input_scales:
                        tensors[f"{module}.input_scale"] = torch.tensor(0.01 * place)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    settings = json.loads((float_folder / "config.json").read_text())
    scheme = "static" if input_scales else "dynamic"
    settings["quantization_config"] = {"quant_method": "fp8", "activation_scheme": scheme, **config}
    (folder / "config.json").write_text(json.dumps(settings))
    return folder


def linears(model: torch.nn.Module) -> dict[str, LinearBase]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LinearBase)}


def test_online_fp8_equals_the_fp8_checkpoint_of_the_same_scales(float_folder, tmp_path) -> None:
    """--quantization fp8 on the float checkpoint and an fp8 checkpoint holding the same scales load to equal
    float8 weights and scales, hence equal logits (exactly); the LM head and embeddings stay float, and the logits
    follow the float model's within float8's rounding (3 mantissa bits: up to 6 % of a weight or activation;
    measured 2.3e-2 on logits up to 0.59)."""
    source = resolve_model_source(str(float_folder))
    assert resolve_quantization("fp8", source.format, False, source.quantization_method) == "fp8"
    config, online = load_model(float_folder, keep_quantized=False)
    _, dense = load_model(float_folder, keep_quantized=False)
    assert quantize_linears_fp8(online) == 2 * 4  # qkv, o, gate_up, down in each of 2 layers
    checkpoint = write_fp8_checkpoint(float_folder, tmp_path / "fp8")
    saved = resolve_model_source(str(checkpoint))
    assert saved.quantization_method == "fp8"
    assert resolve_quantization(None, saved.format, False, saved.quantization_method) == "fp8"
    assert resolve_quantization("fp8", saved.format, False, saved.quantization_method) == "fp8"
    _, loaded = load_model(checkpoint, keep_quantized=True)

    online_layers, loaded_layers = linears(online), linears(loaded)
    assert online_layers.keys() == loaded_layers.keys()
    for name, layer in online_layers.items():
        other = loaded_layers[name]
        assert layer.weight.dtype == other.weight.dtype == torch.float8_e4m3fn, name
        assert layer.activation_scheme == other.activation_scheme == "tensor"
        assert torch.equal(layer.weight.view(torch.uint8), other.weight.view(torch.uint8)), name
        assert torch.equal(layer.weight_scale, other.weight_scale), name
        assert layer.weight_scale.unique().numel() == 1  # one scale a layer, q|k|v included
    assert online.lm_head.weight.dtype == torch.float32
    assert online.model.embed_tokens.weight.dtype == torch.float32

    tokens = [5, 9, 14, 3, 22, 7, 100, 42, 8]
    chunks = [5, 2, 1, 1]  # a prefill in chunks, then decode steps
    fp8_logits = logits_of(online, config, tokens, chunks)
    assert torch.equal(fp8_logits, logits_of(loaded, config, tokens, chunks))
    float_logits = logits_of(dense, config, tokens, chunks)
    torch.testing.assert_close(fp8_logits, float_logits, atol=5e-2, rtol=0)
    assert not torch.equal(fp8_logits, float_logits)


def test_fp8_checkpoint_ignored_layers_and_none(float_folder, tmp_path) -> None:
    """ignored_layers stay float; --quantization none dequantizes the checkpoint at load (weight * scale)."""
    ignored = "model.layers.1.mlp.down_proj"
    checkpoint = write_fp8_checkpoint(float_folder, tmp_path / "fp8", ignored_layers=[ignored])
    _, kept = load_model(checkpoint, keep_quantized=True)
    layers = linears(kept)
    assert layers[ignored].weight.dtype == torch.float32 and layers[ignored].activation_scheme is None
    assert layers["model.layers.0.mlp.down_proj"].weight.dtype == torch.float8_e4m3fn
    assert resolve_quantization("none", "safetensors", False, "fp8") is None
    _, dense = load_model(checkpoint, keep_quantized=False)
    tensors = load_file(checkpoint / "model.safetensors")
    expected = (
        tensors["model.layers.0.mlp.down_proj.weight"].float()
        * tensors["model.layers.0.mlp.down_proj.weight_scale"]
    )
    assert torch.equal(linears(dense)["model.layers.0.mlp.down_proj"].weight, expected)


def test_static_fp8_checkpoint_takes_the_largest_input_scale_of_a_merged_layer(
    float_folder, tmp_path
) -> None:
    """activation_scheme "static": each layer quantizes its input with its stored input_scale; a merged layer
    (q|k|v) takes its parts' largest, as vLLM does (one input, one scale). A layer's output against the same
    arithmetic in PyTorch, and logits near the float model's."""
    checkpoint = write_fp8_checkpoint(float_folder, tmp_path / "static", input_scales=True)
    config, kept = load_model(checkpoint, keep_quantized=True)
    layers = linears(kept)
    qkv, o_proj = layers["model.layers.0.self_attn.qkv_proj"], layers["model.layers.0.self_attn.o_proj"]
    assert qkv.activation_scheme == o_proj.activation_scheme == "static"
    assert qkv.input_scale == torch.tensor(0.03).item() and o_proj.input_scale == torch.tensor(0.01).item()
    x = torch.randn(3, config.hidden_size, generator=torch.Generator().manual_seed(4))
    scale = torch.tensor(0.03)
    activations = (x / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).float() * scale
    expected = F.linear(activations.double(), (qkv.weight.float() * qkv.weight_scale[:, None]).double())
    with torch.no_grad():
        torch.testing.assert_close(qkv(x).double(), expected, rtol=1e-5, atol=1e-5)
    _, dense = load_model(float_folder, keep_quantized=False)
    tokens, chunks = [5, 9, 14, 3, 22, 7, 100, 42, 8], [5, 2, 1, 1]
    torch.testing.assert_close(
        logits_of(kept, config, tokens, chunks), logits_of(dense, config, tokens, chunks), atol=5e-2, rtol=0
    )


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"activation_scheme": "per-token"}, "activation_scheme 'per-token' is not supported"),
        ({"weight_block_size": [128]}, r"weight_block_size must be \[rows, columns\], got \[128\]"),
        (
            {"weight_block_size": [128, 128], "activation_scheme": "static"},
            "weight_block_size needs activation_scheme 'dynamic'",
        ),
        ({"fmt": "e5m2"}, "fmt 'e5m2' is not supported"),
        ({"ignored_layers": "lm_head"}, "ignored_layers must be a list of module names"),
    ],
)
def test_unsupported_fp8_configs_are_refused_by_name(config, message) -> None:
    with pytest.raises(ValueError, match=message):
        parse_fp8_config({"quant_method": "fp8", **config})


def test_fp8_flag_is_refused_where_it_cannot_apply(float_folder, tmp_path) -> None:
    with pytest.raises(ValueError, match="a .gguf file's matrices are already quantized"):
        resolve_quantization("fp8", "gguf", True, None)
    with pytest.raises(ValueError, match="quantization 'fp8' does not match the checkpoint"):
        resolve_quantization("fp8", "safetensors", False, "awq")
    with pytest.raises(ValueError, match="quantization 'awq' does not match the checkpoint"):
        resolve_quantization("awq", "safetensors", False, "fp8")
    # An input_scale in a dynamic checkpoint is not silently dropped.
    checkpoint = write_fp8_checkpoint(float_folder, tmp_path / "fp8", input_scales=True)
    settings = json.loads((checkpoint / "config.json").read_text())
    settings["quantization_config"]["activation_scheme"] = "dynamic"
    (checkpoint / "config.json").write_text(json.dumps(settings))
    with pytest.raises(ValueError, match="input_scale belongs to a scheme the engine does not run"):
        load_model(checkpoint, keep_quantized=True)


BLOCK = (32, 32)


def write_block_fp8_checkpoint(float_folder: pathlib.Path, folder: pathlib.Path) -> pathlib.Path:
    """The float checkpoint as DeepSeek / Qwen block FP8 checkpoints are saved (quant_method "fp8",
    weight_block_size): each linear weight float8 with `weight_scale_inv` [ceil(rows / 32), ceil(cols / 32)], one
    scale (the block's absmax / 448) a 32 x 32 block (128 x 128 in the real ones; the tiny model is 64 wide)."""
    from pagedserve.layers.ct_quant import expand_scales

    folder.mkdir()
    tensors = load_file(float_folder / "model.safetensors")
    for name in [n for n in tensors if n.startswith("model.layers.") and n.endswith("_proj.weight")]:
        weight = tensors[name].float()
        rows, cols = weight.shape
        blocks = weight.reshape(rows // BLOCK[0], BLOCK[0], cols // BLOCK[1], BLOCK[1])
        scale = (blocks.abs().amax(dim=(1, 3)) / FP8_MAX).clamp(min=1e-12)
        quantized = (weight / expand_scales(scale, BLOCK, (rows, cols))).clamp(-FP8_MAX, FP8_MAX)
        tensors[name] = quantized.to(torch.float8_e4m3fn)
        tensors[name.removesuffix("weight") + "weight_scale_inv"] = scale
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    settings = json.loads((float_folder / "config.json").read_text())
    settings["quantization_config"] = {
        "quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e4m3", "weight_block_size": list(BLOCK),
    }  # fmt: skip
    (folder / "config.json").write_text(json.dumps(settings))
    return folder


def test_block_fp8_checkpoint_reads_as_transformers_reads_it(float_folder, tmp_path) -> None:
    """A block FP8 checkpoint: every layer kept float8 with its block scales (q|k|v's stacked), dequantized at load
    exactly to the weights transformers' own fp8 reader gives (it dequantizes on a CPU); a layer's output against
    the same arithmetic in PyTorch (activations quantized per token in groups of 32); logits near transformers'
    (float activations there: within float8's rounding, measured 1.7e-2)."""
    import transformers

    from pagedserve.layers.ct_quant import _fp8_activations, expand_scales

    checkpoint = write_block_fp8_checkpoint(float_folder, tmp_path / "block")
    config, kept = load_model(checkpoint, keep_quantized=True)
    _, dense = load_model(checkpoint, keep_quantized=False)
    reference = transformers.AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=torch.float32).eval()
    theirs = dict(reference.named_parameters())
    ours = dict(dense.named_parameters())
    for index in range(config.num_hidden_layers):
        prefix = f"model.layers.{index}"
        q, k, v = (theirs[f"{prefix}.self_attn.{p}_proj.weight"] for p in "qkv")
        assert torch.equal(ours[f"{prefix}.self_attn.qkv_proj.weight"], torch.cat((q, k, v)))
        down = theirs[f"{prefix}.mlp.down_proj.weight"]
        assert torch.equal(ours[f"{prefix}.mlp.down_proj.weight"], down)

    qkv = linears(kept)["model.layers.0.self_attn.qkv_proj"]
    assert qkv.weight.dtype == torch.float8_e4m3fn and qkv.weight_block == BLOCK
    assert qkv.activation_scheme == "group" and tuple(qkv.weight_scale.shape) == (4, 2)  # (64 + 32 + 32) / 32
    x = torch.randn(3, config.hidden_size, generator=torch.Generator().manual_seed(6))
    widened = qkv.weight.float() * expand_scales(qkv.weight_scale, BLOCK, tuple(qkv.weight.shape))
    expected = F.linear(_fp8_activations(x, "group", None, BLOCK[1]).double(), widened.double())
    with torch.no_grad():
        torch.testing.assert_close(qkv(x).double(), expected, rtol=1e-5, atol=1e-5)

    tokens, chunks = [5, 9, 14, 3, 22, 7, 100, 42, 8], [5, 2, 1, 1]
    with torch.no_grad():
        their_logits = reference(torch.tensor([tokens])).logits[0]
    torch.testing.assert_close(logits_of(kept, config, tokens, chunks), their_logits, atol=5e-2, rtol=0)
    torch.testing.assert_close(logits_of(dense, config, tokens, chunks), their_logits, atol=1e-5, rtol=1e-5)


def test_block_scales_cut_for_tensor_parallelism_only_on_blocks() -> None:
    from pagedserve.layers.ct_quant import ScaledTensor
    from pagedserve.layers.shard import slice_columns, slice_rows

    weight = ScaledTensor(
        torch.zeros(96, 64, dtype=torch.float8_e4m3fn), torch.rand(3, 2), "group", block=BLOCK
    )
    assert tuple(slice_rows(weight, 32, 64).scale.shape) == (2, 2)
    assert tuple(slice_columns(weight, 32, 32, "down_proj").scale.shape) == (3, 1)
    with pytest.raises(ValueError, match=r"rows \[16, 48\) do not fall on whole 32-wide scale blocks"):
        slice_rows(weight, 16, 32)
    with pytest.raises(ValueError, match="down_proj columns"):
        slice_columns(weight, 0, 48, "down_proj")


def test_online_fp8_quantizes_the_checkpoints_values_under_bfloat16_storage(tmp_path) -> None:
    """On CPUs without bfloat16 instructions a 16-bit checkpoint runs float32 compute with bfloat16 matrices; with
    --quantization fp8 the linear layers must be quantized from the checkpoint's own values (float16 here), not
    from their bfloat16 rounding (a second rounding: it moves some float8 codes). The embedding and LM head, left
    float, still take bfloat16 storage."""
    from pagedserve.config import CacheConfig
    from pagedserve.model_config import ModelConfig
    from pagedserve.worker.model_runner import ModelRunner

    folder = tmp_path / "f16"
    model = tiny_llama().float()
    with torch.no_grad():  # values that use float16's mantissa (bfloat16 keeps 7 of its 10 bits)
        for param in model.parameters():
            param.normal_(0, 0.05, generator=torch.Generator().manual_seed(3))
    model.to(torch.float16).save_pretrained(folder)
    source = resolve_model_source(str(folder))
    runner = ModelRunner(
        source.hf_config, ModelConfig(), CacheConfig(), 64, source.iter_weights(), torch.float32,
        torch.device("cpu"), attention_backend="cpu", weight_dtype=torch.bfloat16, quantize_fp8=True,
    )  # fmt: skip
    raw = load_file(folder / "model.safetensors")
    layer = runner.model.model.layers[0].mlp.down_proj
    original = raw["model.layers.0.mlp.down_proj.weight"].float()
    scale = original.abs().amax() / FP8_MAX
    expected = (original / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    assert torch.equal(layer.weight.view(torch.uint8), expected.view(torch.uint8))
    rounded = original.bfloat16().float()  # what the layer held before: its scale and codes move
    via_bf16 = (rounded / (rounded.abs().amax() / FP8_MAX)).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    assert not torch.equal(expected.view(torch.uint8), via_bf16.view(torch.uint8))  # the case is a real one
    assert runner.model.lm_head.weight.dtype == runner.model.model.embed_tokens.weight.dtype == torch.bfloat16
