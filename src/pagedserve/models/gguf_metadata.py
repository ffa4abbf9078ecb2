"""GGUF metadata: the decoded value of a key, and what the metadata says beyond the model config (EOS ids and
sampling defaults).

Key names follow the GGUF spec (`{arch}.block_count`, `tokenizer.ggml.eos_token_id`, ...).
"""

from __future__ import annotations

import pathlib
from typing import Any

import gguf
import numpy as np

# general.sampling.* keys (written by recent llama.cpp converters) → Hugging Face generation_config names.
_SAMPLING_KEYS = {
    "general.sampling.temp": "temperature",
    "general.sampling.top_k": "top_k",
    "general.sampling.top_p": "top_p",
    "general.sampling.min_p": "min_p",
    "general.sampling.penalty_repeat": "repetition_penalty",
}

_INTEGER_TYPES = {
    gguf.GGUFValueType.UINT8,
    gguf.GGUFValueType.INT8,
    gguf.GGUFValueType.UINT16,
    gguf.GGUFValueType.INT16,
    gguf.GGUFValueType.UINT32,
    gguf.GGUFValueType.INT32,
    gguf.GGUFValueType.UINT64,
    gguf.GGUFValueType.INT64,
}
_FLOAT_TYPES = {gguf.GGUFValueType.FLOAT32, gguf.GGUFValueType.FLOAT64}


def _decode_scalar(part: np.ndarray, value_type: gguf.GGUFValueType) -> Any:
    if value_type == gguf.GGUFValueType.STRING:
        return bytes(part).decode("utf-8")
    if value_type in _INTEGER_TYPES:
        return int(part[0])
    if value_type in _FLOAT_TYPES:
        return float(part[0])
    if value_type == gguf.GGUFValueType.BOOL:
        return bool(part[0])
    raise ValueError(f"unexpected GGUF value type {value_type!r}")


def field_value(reader: gguf.GGUFReader, key: str, default: Any = None) -> Any:
    """The decoded value of a metadata key: str, int, float, bool, or a list of those for arrays."""
    field = reader.fields.get(key)
    if field is None:
        return default
    if field.types[0] == gguf.GGUFValueType.ARRAY:
        return [_decode_scalar(field.parts[index], field.types[-1]) for index in field.data]
    return _decode_scalar(field.parts[field.data[0]], field.types[0])


def field_length(reader: gguf.GGUFReader, key: str) -> int:
    """Number of items of an array field without decoding it (the token list has ~10^5 strings)."""
    field = reader.fields.get(key)
    return 0 if field is None else len(field.data)


def required_field(reader: gguf.GGUFReader, key: str, path: pathlib.Path) -> Any:
    value = field_value(reader, key)
    if value is None:
        raise ValueError(f"GGUF file {path} lacks the metadata key {key!r}")
    return value


def find_tensor(reader: gguf.GGUFReader, name: str) -> Any:
    return next((tensor for tensor in reader.tensors if tensor.name == name), None)


def gguf_eos_token_ids(reader: gguf.GGUFReader) -> list[int]:
    """End-of-sequence plus end-of-turn / end-of-message ids (Llama 3 chats end with <|eot_id|>)."""
    ids: list[int] = []
    for key in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"):
        value = field_value(reader, key)
        if value is not None and int(value) not in ids:
            ids.append(int(value))
    return ids


def gguf_generation_defaults(reader: gguf.GGUFReader) -> dict[str, Any]:
    return {
        hf_key: value
        for key, hf_key in _SAMPLING_KEYS.items()
        if (value := field_value(reader, key)) is not None
    }
