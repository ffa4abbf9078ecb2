"""Resolve `--model` to a `ModelSource` (config, sampling defaults, EOS ids, a lazy weight stream) and load its
tokenizer. Local files only: a Hugging Face folder, a .gguf file, or the bundled GGUF when no model is given.
Nothing here downloads, and no code shipped with a checkpoint is ever run."""

from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import gguf
import numpy as np
import torch
import transformers

from pagedserve import envs
from pagedserve.layers.ct_quant import ScaledTensor
from pagedserve.layers.gguf_quant import QuantizedTensor
from pagedserve.layers.input_perm import PermutedWeight
from pagedserve.models import awq_gptq, ct_weights, gguf_config, gguf_weights, hf_folder, hub_cache
from pagedserve.models.awq_gptq_config import AwqGptqConfig, parse_awq_gptq_config
from pagedserve.models.bundled import BUNDLED_MODEL_NAME, bundled_model_path
from pagedserve.models.causal_classifier import resolve_classifier_tokens
from pagedserve.models.ct_scheme import CompressedTensorsConfig, parse_compressed_tensors_config
from pagedserve.models.fp8_config import parse_fp8_config
from pagedserve.models.gguf_metadata import field_value, gguf_eos_token_ids, gguf_generation_defaults
from pagedserve.models.hf_overrides import apply_hf_overrides
from pagedserve.models.weight_progress import with_progress

SourceFormat = Literal["safetensors", "gguf", "dummy"]
LoadFormatName = Literal["auto", "safetensors", "gguf", "dummy"]


@dataclass
class ModelSource:
    name: str
    """Display name: the bundled model's name, else the folder name or the GGUF file's stem."""
    path: pathlib.Path
    """Model folder or .gguf file."""
    format: SourceFormat
    hf_config: transformers.PretrainedConfig
    """LlamaConfig / MistralConfig / Qwen2Config / Qwen3Config with `architectures` set."""
    generation_defaults: dict[str, Any]
    """Default sampling parameters from generation_config.json (or GGUF general.sampling.*); {} if none."""
    eos_token_ids: list[int]
    quantization_method: str | None = None
    """The checkpoint's quantization_config.quant_method (config.json), e.g. "compressed-tensors"; None if unset."""
    compressed_tensors: CompressedTensorsConfig | None = None
    """The validated quantization_config of a compressed-tensors checkpoint, or of an fp8 one as the
    compressed-tensors scheme it is (models/fp8_config.py)."""
    awq_gptq: AwqGptqConfig | None = None
    """The validated quantization_config of an AWQ or GPTQ checkpoint."""
    _gguf_reader: gguf.GGUFReader | None = field(default=None, repr=False, compare=False)

    def iter_weights(
        self, keep_quantized: bool = False
    ) -> Iterator[tuple[str, torch.Tensor | QuantizedTensor | ScaledTensor | PermutedWeight]]:
        """(Hugging Face parameter name, tensor) pairs, one tensor read at a time, with a progress bar on
        stderr. GGUF matrices come as their blocks (QuantizedTensor) where `keep_quantized` and the engine
        multiplies that type, other GGUF quantized types dequantized to float32; compressed-tensors layers as
        GGUF blocks or ScaledTensor where `keep_quantized`, else float32 (ct_weights.py); AWQ / GPTQ layers as GGUF
        blocks (with their act-order column order: PermutedWeight) where `keep_quantized`, else float32
        (awq_gptq.py); other tensors keep their stored dtype. `lm_head.weight` only appears for untied models."""
        if self.format == "dummy":
            raise ValueError("load_format 'dummy' has no weights: initialise the model randomly instead")
        if self.format == "gguf":
            reader = self._reader()
            architecture = gguf_config.gguf_architecture(reader, self.path)
            stream = gguf_weights.iter_gguf_weights(
                reader, architecture, self.hf_config, self.path, keep_quantized
            )
            total_bytes = gguf_weights.gguf_tensor_bytes(reader)
            first_file = self.path.name
        else:
            files = hf_folder.find_safetensors_files(self.path)
            stream = hf_folder.iter_safetensors_weights(files)
            total_bytes = sum(file.stat().st_size for file in files)
            first_file = files[0].name
        # Not a generator itself, so bad calls (dummy, missing shards) fail at the call, not at first next().
        pairs = with_progress(stream, total_bytes, first_file)
        if self.compressed_tensors is not None:
            pairs = ct_weights.iter_compressed_weights(pairs, self.compressed_tensors, keep_quantized)
        if self.awq_gptq is not None:
            pairs = awq_gptq.iter_awq_gptq_weights(pairs, self.awq_gptq, keep_quantized)
        return self._skip_tied_head(pairs)

    def _skip_tied_head(
        self, weights: Iterator[tuple[str, torch.Tensor]]
    ) -> Iterator[tuple[str, torch.Tensor]]:
        tied = bool(getattr(self.hf_config, "tie_word_embeddings", False))
        for name, tensor in weights:
            # Some exports keep a copy of the embedding as lm_head even when tied; the model shares one tensor.
            if tied and name == "lm_head.weight":
                continue
            yield name, tensor

    def _reader(self) -> gguf.GGUFReader:
        # Parsing the metadata (token lists) takes seconds, so the reader built at resolve time is reused.
        if self._gguf_reader is None:
            self._gguf_reader = open_gguf(self.path)
        return self._gguf_reader


# quantization_config quant_methods whose checkpoints the engine loads (kept quantized, or dequantized).
CHECKPOINT_METHODS = ("compressed-tensors", "awq", "gptq", "fp8")


def resolve_quantization(
    requested: str | None,
    source_format: SourceFormat,
    fast_gguf_kernels: bool,
    checkpoint_method: str | None = None,
) -> str | None:
    """The quantization the engine runs: "gguf" (GGUF blocks kept), "compressed-tensors", "awq" or "gptq" (a
    checkpoint's quantized layers kept, ct_weights.py / awq_gptq.py) or None (float weights). Unset, it is the
    checkpoint's: its quantization_config, or a GGUF file's blocks where they are the faster choice at every batch
    size (`fast_gguf_kernels`: worker/dtypes.py::gguf_blocks_by_default; elsewhere dequantized at load,
    docs/architecture.md).
    "none" dequantizes any quantized checkpoint at load. A value that contradicts the checkpoint is refused."""
    if checkpoint_method is not None and checkpoint_method not in CHECKPOINT_METHODS:
        raise ValueError(
            f"the checkpoint's quantization_config quant_method {checkpoint_method!r} is not supported yet; "
            f"supported: {', '.join(CHECKPOINT_METHODS)}, and GGUF files"
        )
    if requested == "none":
        return None
    if checkpoint_method is not None:
        if requested in (None, "", checkpoint_method):
            return checkpoint_method
        raise ValueError(
            f"quantization {requested!r} does not match the checkpoint, whose quantization_config says "
            f"{checkpoint_method!r}"
        )
    if requested in (None, ""):
        return "gguf" if source_format == "gguf" and fast_gguf_kernels else None
    if requested == "fp8":  # vLLM's online FP8: a float checkpoint's linear layers quantized at load
        if source_format == "gguf":
            raise ValueError(
                "quantization 'fp8' quantizes a float checkpoint at load; a .gguf file's matrices are already "
                "quantized (keep them with 'gguf', or dequantize them with 'none')"
            )
        return "fp8"
    if requested == "gguf":
        if source_format != "gguf":
            raise ValueError("quantization 'gguf' needs a .gguf model file")
        return "gguf"
    if requested in CHECKPOINT_METHODS:
        raise ValueError(
            f"quantization {requested!r} needs a checkpoint whose config.json has a quantization_config with "
            f"quant_method {requested!r}"
        )
    raise ValueError(
        f"quantization {requested!r} is not supported yet; supported: gguf (a .gguf file's Q4_0/Q4_1/Q8_0/Q4_K/Q6_K "
        "blocks kept as they are), compressed-tensors (W4A16, W8A16, W8A8, FP8 checkpoints), awq and gptq "
        "(4-bit AutoAWQ GEMM, 4- and 8-bit GPTQ checkpoints), fp8 (fp8 checkpoints, or a float checkpoint "
        "quantized at load), none (weights dequantized at load)"
    )


class _GGUFReader(gguf.GGUFReader):
    """gguf's reader, slicing a plain ndarray view of its memmap while it parses the header: every slice of an
    np.memmap runs memmap's Python-level __array_finalize__, and the bundled file's 49 152-token vocabulary takes
    ~250 000 slices (10 s of the model's start-up, in every process that opens the file; ~1 s this way)."""

    def _get(self, offset: int, dtype: Any, count: int = 1, override_order: Any = None) -> Any:
        plain = self.__dict__.get("_plain")
        if plain is None:
            plain = self.__dict__["_plain"] = self.data.view(np.ndarray)
        count = int(count)
        arr = plain[offset : offset + np.dtype(dtype).itemsize * count].view(dtype=dtype)[:count]
        return arr.view(arr.dtype.newbyteorder(self.byte_order if override_order is None else override_order))


def open_gguf(path: pathlib.Path) -> gguf.GGUFReader:
    try:
        return _GGUFReader(path)
    except (ValueError, OSError, KeyError, IndexError) as error:
        raise ValueError(f"{path} is not a readable GGUF file: {error}") from error


def _local_path(
    value: str, what: str, revision: str | None = None, download_dir: str | None = None
) -> pathlib.Path:
    """A local folder or file; a Hub id (org/name) is looked up in the local Hub cache (models/hub_cache.py)."""
    path = pathlib.Path(value).expanduser()
    if path.exists():
        return path.resolve()
    if hub_cache.looks_like_repo_id(value):
        snapshot = hub_cache.find_snapshot(value, revision, download_dir)
        if snapshot is not None:
            return snapshot
        raise FileNotFoundError(
            f"{what} {value!r} is neither a local path nor in the local Hugging Face cache (looked for "
            f"{hub_cache.describe_search(value, revision, download_dir)}): pagedserve downloads nothing; fill the "
            "cache first (huggingface-cli download, or a vLLM pod's --download-dir / HF_HOME) or pass a folder"
        )
    raise FileNotFoundError(
        f"{what} {value!r} does not exist: pagedserve loads a local Hugging Face folder, a .gguf file or a Hub id "
        "already in the local Hugging Face cache (nothing is downloaded)"
    )


def _is_gguf_file(path: pathlib.Path) -> bool:
    return path.is_file() and path.suffix.lower() == ".gguf"


def resolve_model_source(
    model: str | None,
    load_format: str = "auto",
    *,
    revision: str | None = None,
    download_dir: str | None = None,
    hf_overrides: dict[str, Any] | None = None,
) -> ModelSource:
    """Find and validate a model: config, sampling defaults and EOS ids now, weights later via iter_weights.
    `model` is a folder, a .gguf file, or a Hub id found in the local Hub cache at `revision` (--download-dir);
    `hf_overrides` are set over its config (--hf-overrides)."""
    source = _resolve_source(model, load_format, revision, download_dir)
    if hf_overrides:
        apply_hf_overrides(source.hf_config, hf_overrides)
    resolve_classifier_tokens(source.hf_config, source.path)  # Qwen3-Reranker's "no" / "yes" (--hf-overrides)
    return source


def _resolve_source(
    model: str | None, load_format: str, revision: str | None, download_dir: str | None
) -> ModelSource:
    if load_format not in get_args(LoadFormatName):
        raise ValueError(
            f"load_format must be one of {', '.join(get_args(LoadFormatName))}, got {load_format!r}"
        )
    if model:
        path = _local_path(model, "model", revision, download_dir)
        if path.is_file():
            name = path.stem
        elif pathlib.Path(model).expanduser().exists():
            name = path.name
        else:  # a Hub id: its name, not the snapshot's commit
            name = model.rsplit("/", 1)[-1]
    else:
        path, name = bundled_model_path(), BUNDLED_MODEL_NAME

    if path.is_file():
        if not _is_gguf_file(path):
            raise ValueError(
                f"model file {path} is not a .gguf file; pass a .gguf file or a Hugging Face folder"
            )
        if load_format == "safetensors":
            raise ValueError(f"load_format 'safetensors' does not match the GGUF file {path}")
        return _resolve_gguf(path, name, dummy=load_format == "dummy")
    if load_format == "gguf":
        raise ValueError(f"load_format 'gguf' needs a .gguf file, got the folder {path}")
    return _resolve_folder(path, name, dummy=load_format == "dummy")


def _resolve_gguf(path: pathlib.Path, name: str, dummy: bool) -> ModelSource:
    reader = open_gguf(path)
    config = gguf_config.build_gguf_config(reader, path)
    if not dummy:
        gguf_weights.check_gguf_tensors(reader, path, gguf_config.gguf_architecture(reader, path))
    return ModelSource(
        name=name,
        path=path,
        format="dummy" if dummy else "gguf",
        hf_config=config,
        generation_defaults=gguf_generation_defaults(reader),
        eos_token_ids=gguf_eos_token_ids(reader),
        _gguf_reader=reader,
    )


def _resolve_folder(path: pathlib.Path, name: str, dummy: bool) -> ModelSource:
    config = hf_folder.load_folder_config(path)
    if not dummy:
        hf_folder.find_safetensors_files(path)  # fail now, not after the engine has started
    defaults, generation_eos = hf_folder.read_generation_config(path)
    method, compressed, awq_gptq_config = _checkpoint_quantization(config)
    return ModelSource(
        name=name,
        path=path,
        format="dummy" if dummy else "safetensors",
        hf_config=config,
        generation_defaults=defaults,
        eos_token_ids=hf_folder.merged_eos_token_ids(generation_eos, getattr(config, "eos_token_id", None)),
        quantization_method=method,
        compressed_tensors=compressed,
        awq_gptq=awq_gptq_config,
    )


def _checkpoint_quantization(
    config: transformers.PretrainedConfig,
) -> tuple[str | None, CompressedTensorsConfig | None, AwqGptqConfig | None]:
    """(quant_method, parsed compressed-tensors config, parsed AWQ / GPTQ config) from config.json's
    quantization_config."""
    raw = getattr(config, "quantization_config", None)
    if raw is None:
        return None, None, None
    raw = raw.to_dict() if hasattr(raw, "to_dict") else dict(raw)
    method = str(raw.get("quant_method", "")).lower() or None
    if method == "compressed-tensors":
        return method, parse_compressed_tensors_config(raw), None
    if method in ("awq", "gptq"):
        return method, None, parse_awq_gptq_config(raw)
    if method == "fp8":
        return method, parse_fp8_config(raw), None
    return method, None, None


def load_tokenizer(
    source: ModelSource,
    tokenizer: str | None = None,
    *,
    revision: str | None = None,
    download_dir: str | None = None,
) -> transformers.PreTrainedTokenizerBase:
    """The model's tokenizer (or the one at `tokenizer`: a folder, a .gguf file or a cached Hub id at `revision`),
    from local files only."""
    path = _local_path(tokenizer, "tokenizer", revision, download_dir) if tokenizer else source.path
    kwargs: dict[str, Any] = {"local_files_only": True, "trust_remote_code": False}
    if path.is_file():
        if not _is_gguf_file(path):
            raise ValueError(f"tokenizer file {path} is not a .gguf file; pass a folder or a .gguf file")
        cached = _cached_gguf_tokenizer(path)
        if cached is not None:
            return cached
        folder, kwargs["gguf_file"] = path.parent, path.name
    else:
        folder = path
    try:
        loaded = transformers.AutoTokenizer.from_pretrained(str(folder), **kwargs)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"cannot load a tokenizer from {path}: {error}") from error
    if path.is_file():
        if not getattr(loaded, "chat_template", None):
            reader = source._reader() if path == source.path else open_gguf(path)
            template = field_value(reader, "tokenizer.chat_template")
            if template:
                loaded.chat_template = template
        _cache_gguf_tokenizer(path, loaded)
    return loaded


def _tokenizer_cache_path(path: pathlib.Path) -> pathlib.Path:
    """Where a .gguf file's converted tokenizer is kept: keyed by the file (path, size, mtime) and transformers."""
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{transformers.__version__}"
    return pathlib.Path(envs.cache_dir()) / "tokenizers" / hashlib.sha256(key.encode()).hexdigest()[:32]


def _cached_gguf_tokenizer(path: pathlib.Path) -> transformers.PreTrainedTokenizerBase | None:
    """transformers converts a GGUF vocabulary to a tokenizer in ~7 s (the bundled model; in every process that
    starts an engine); its saved form loads in well under a second."""
    folder = _tokenizer_cache_path(path)
    if not (folder / "tokenizer_config.json").is_file():
        return None
    try:
        return transformers.AutoTokenizer.from_pretrained(
            str(folder), local_files_only=True, trust_remote_code=False
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None  # a damaged cache entry: convert again (and rewrite it)


def _cache_gguf_tokenizer(path: pathlib.Path, loaded: transformers.PreTrainedTokenizerBase) -> None:
    folder = _tokenizer_cache_path(path)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = tempfile.mkdtemp(dir=folder.parent)
        try:
            loaded.save_pretrained(tmp)
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(tmp, folder)  # whole entries only: a concurrent reader never sees half of one
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError:
        pass  # a read-only cache only costs the conversion next time
