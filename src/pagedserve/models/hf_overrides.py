"""--hf-overrides (vLLM's flag): values set over the checkpoint's config before anything reads it.

A dict merges into the dict or sub-config it names (text_config, rope_scaling), key by key; any other value
replaces. transformers 5 keeps rope_theta and partial_rotary_factor inside rope_parameters (rope_scaling is its old
name), so rope overrides merge there: '{"rope_scaling": {"rope_type": "yarn", ...}}' keeps the checkpoint's
rope_theta, and '{"rope_theta": 5e5}' changes the value the model reads, not an attribute nothing reads.
"""

from __future__ import annotations

from typing import Any

import transformers

_ROPE_DICTS = ("rope_scaling", "rope_parameters")
_ROPE_VALUES = ("rope_theta", "partial_rotary_factor")


def apply_hf_overrides(config: Any, overrides: dict[str, Any]) -> Any:
    """`config` with `overrides` set over it (in place; returned for chaining)."""
    for key, value in overrides.items():
        if not isinstance(key, str):
            raise ValueError(f"hf_overrides: keys must be config field names, got {key!r}")
        rope = getattr(config, "rope_parameters", None)
        if key in _ROPE_DICTS:
            if not isinstance(value, dict):
                raise ValueError(f"hf_overrides: {key} must be a JSON object, got {value!r}")
            config.rope_parameters = _merged(dict(rope or {}), _with_rope_type(value))
        elif key in _ROPE_VALUES and isinstance(rope, dict) and "rope_theta" in rope:
            config.rope_parameters = {**rope, key: value}
        else:
            current = getattr(config, key, None)
            if isinstance(value, dict) and isinstance(current, transformers.PretrainedConfig):
                apply_hf_overrides(current, value)
            elif isinstance(value, dict) and isinstance(current, dict):
                setattr(config, key, _merged(dict(current), value))
            else:
                setattr(config, key, value)
    return config


def _with_rope_type(value: dict[str, Any]) -> dict[str, Any]:
    """Older configs spell rope_type `type`: both keys, so the checkpoint's rope_type never outvotes it."""
    if "type" in value and "rope_type" not in value:
        return {**value, "rope_type": value["type"]}
    return value


def _merged(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    for key, value in update.items():
        base[key] = (
            _merged(dict(base[key]), value)
            if isinstance(value, dict) and isinstance(base.get(key), dict)
            else value
        )
    return base
