"""A .gguf file's tokenizer is converted once and then loaded from pagedserve's cache: the cached one must be the
same tokenizer (ids, special tokens, chat template, decoding)."""

from __future__ import annotations

import pytest

from pagedserve.models.loader import _tokenizer_cache_path, load_tokenizer, resolve_model_source

pytestmark = pytest.mark.model

TEXTS = [
    "Hello, world!",
    "  leading spaces and\ttabs\n",
    "<|im_start|>user\nhi<|im_end|>",
    "naïve café 東京 🙂",
]
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"}]


def test_cached_tokenizer_equals_the_converted_one(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PAGEDSERVE_CACHE_DIR", str(tmp_path))
    source = resolve_model_source(None)
    assert not _tokenizer_cache_path(source.path).exists()
    converted = load_tokenizer(source)
    assert (_tokenizer_cache_path(source.path) / "tokenizer_config.json").is_file()
    cached = load_tokenizer(source)
    assert len(cached) == len(converted)
    assert (cached.eos_token_id, cached.bos_token_id, cached.pad_token_id) == (
        converted.eos_token_id, converted.bos_token_id, converted.pad_token_id,
    )  # fmt: skip
    for text in TEXTS:
        ids = converted.encode(text)
        assert cached.encode(text) == ids
        assert cached.decode(ids, skip_special_tokens=True) == converted.decode(ids, skip_special_tokens=True)
    assert cached.apply_chat_template(MESSAGES, add_generation_prompt=True) == converted.apply_chat_template(
        MESSAGES, add_generation_prompt=True
    )


def test_a_damaged_cache_entry_is_converted_again(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PAGEDSERVE_CACHE_DIR", str(tmp_path))
    source = resolve_model_source(None)
    entry = _tokenizer_cache_path(source.path)
    entry.mkdir(parents=True)
    (entry / "tokenizer_config.json").write_text("{not json")
    tokenizer = load_tokenizer(source)
    assert tokenizer.encode("Hello") and tokenizer.chat_template
    assert load_tokenizer(source).encode("Hello") == tokenizer.encode("Hello")  # rewritten and readable
