"""Completion prompts to token ids: add_special_tokens (vLLM's field) with a tokenizer that adds a BOS."""

from __future__ import annotations

import pytest
import tokenizers
import transformers
from tokenizers.processors import TemplateProcessing

from pagedserve.server.completions import tokenize_prompts
from pagedserve.server.errors import APIError


@pytest.fixture(scope="module")
def bos_tokenizer() -> transformers.PreTrainedTokenizerFast:
    words = {"<unk>": 0, "<s>": 1, "hello": 2, "world": 3}
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(words, unk_token="<unk>"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    backend.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>")


def test_add_special_tokens_false_leaves_out_the_bos(bos_tokenizer) -> None:
    assert tokenize_prompts(bos_tokenizer, ["hello world"], 4) == [[1, 2, 3]]
    assert tokenize_prompts(bos_tokenizer, ["hello world"], 4, add_special_tokens=False) == [[2, 3]]
    # Token-id prompts are taken as they are either way.
    assert tokenize_prompts(bos_tokenizer, [[3, 2]], 4, add_special_tokens=False) == [[3, 2]]
    with pytest.raises(APIError, match="must not be empty"):
        tokenize_prompts(bos_tokenizer, [""], 4, add_special_tokens=False)
