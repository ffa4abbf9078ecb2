"""The front end's grammar compiler and the core's matcher manager on a tiny real tokenizer (written here in the
`tokenizers` format), and the sampler's bitmask: no model needed."""

from __future__ import annotations

import json
import time

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from pagedserve.config import StructuredOutputsConfig
from pagedserve.core.scheduler_output import GrammarBitmask, ReasoningGate
from pagedserve.errors import InvalidRequestError
from pagedserve.sample.grammar_mask import allowed_tokens, apply_grammar_bitmask
from pagedserve.sampling_params import SamplingParams, StructuredOutputsParams
from pagedserve.structured_output.grammar import GrammarCompiler
from pagedserve.structured_output.manager import StructuredOutputManager

# Single characters and a few words, so any JSON/regex text can be spelled; id 0 is EOS.
VOCAB = ["</s>", *list('{}[]:,"0123456789abcdefghijklmnopqrstuvwxyz _-.'), "yes", "no", "true", "false"]
MODEL_VOCAB = 80  # the model's logit rows run past the tokenizer's (padding): never allowed


@pytest.fixture(scope="module")
def hf_tokenizer() -> PreTrainedTokenizerFast:
    # Byte-level BPE without merges (GPT-2's scheme, as SmolLM2's): one token per character; " " is spelled "Ġ".
    vocab = {t.replace(" ", "\u0120"): i for i, t in enumerate(VOCAB)}
    tok = Tokenizer(models.BPE(vocab, [], unk_token="</s>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>")


def _compiler(hf_tokenizer, **config) -> GrammarCompiler:
    return GrammarCompiler(hf_tokenizer, MODEL_VOCAB, [0], StructuredOutputsConfig(**config))


def _spell(manager: StructuredOutputManager, seq_id: str, text: str) -> bool:
    """Feed `text` token by token, each checked against the mask first; returns whether the grammar completed."""
    done = False
    for char in text:
        token = VOCAB.index(char)
        mask = manager.bitmask([seq_id])
        assert mask is not None
        assert allowed_tokens(mask, MODEL_VOCAB, "cpu")[0, token], f"{char!r} not allowed"
        done = manager.accept(seq_id, token)
    return done


def _manager_with(
    hf_tokenizer, spec: StructuredOutputsParams, seq_id: str = "s", gate: ReasoningGate | None = None
) -> StructuredOutputManager:
    compiler = _compiler(hf_tokenizer)
    manager = StructuredOutputManager(MODEL_VOCAB)
    manager.set_tokenizer(compiler.tokenizer_definition, [0])
    manager.submit("r", compiler.compile(spec)[0])
    deadline = time.monotonic() + 30
    while manager.num_pending and time.monotonic() < deadline:
        manager.wait_for_pending(0.1)
        ready, failed = manager.take_compiled()
        assert not failed
        for _, matcher in ready:
            manager.add_sequence(seq_id, matcher, gate)
    return manager


def test_choice_allows_exactly_the_choices_then_completes(hf_tokenizer) -> None:
    manager = _manager_with(hf_tokenizer, StructuredOutputsParams(choice=["ab", "ba"]))
    first = allowed_tokens(manager.bitmask(["s"]), MODEL_VOCAB, "cpu")[0]
    assert {VOCAB[i] for i in first.nonzero().flatten().tolist()} == {"a", "b"}
    assert not first[len(VOCAB) :].any()
    assert _spell(manager, "s", "ab")


def test_json_schema_path_and_eos_only_when_complete(hf_tokenizer) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}, "required": ["n"]}
    manager = _manager_with(hf_tokenizer, StructuredOutputsParams(json=schema))
    assert not _spell(manager, "s", '{"n":1')
    assert not allowed_tokens(manager.bitmask(["s"]), MODEL_VOCAB, "cpu")[0, 0]  # EOS refused mid-object
    _spell(manager, "s", "2}")
    assert allowed_tokens(manager.bitmask(["s"]), MODEL_VOCAB, "cpu")[0, 0]
    manager.free(["s"])
    assert manager.bitmask(["s"]) is None and not manager.live_seq_ids


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        (StructuredOutputsParams(json={"type": "fancy"}), "fancy"),
        (StructuredOutputsParams(regex="[a-z"), "regex"),
        (StructuredOutputsParams(grammar="root ::= missing"), "missing"),
        (
            StructuredOutputsParams(structural_tag={"structures": [{"begin": "<f>"}], "triggers": ["<g"]}),
            "triggers",
        ),
    ],
)
def test_bad_grammars_are_invalid_requests_naming_the_field(hf_tokenizer, spec, fragment) -> None:
    with pytest.raises(InvalidRequestError, match=fragment) as caught:
        _compiler(hf_tokenizer).compile(spec)
    assert caught.value.param == "structured_outputs"


def test_compiles_are_cached_and_time_bounded(hf_tokenizer, monkeypatch) -> None:
    compiler = _compiler(hf_tokenizer, compile_timeout_s=0.2)
    spec = StructuredOutputsParams(regex="[a-z]+")
    grammar, seconds = compiler.compile(spec)
    assert seconds is not None and seconds > 0
    monkeypatch.setattr(
        compiler, "_validate", lambda spec: time.sleep(2)
    )  # a compile that never ends in time
    assert compiler.compile(StructuredOutputsParams(regex="[a-z]+")) == (
        grammar,
        None,
    )  # served from the cache
    with pytest.raises(InvalidRequestError, match="did not compile within 0.2 s"):
        compiler.compile(StructuredOutputsParams(regex="[0-9]+"))


def test_structural_tag_constrains_only_inside_the_tag(hf_tokenizer) -> None:
    tag = {"structures": [{"begin": "a{", "schema": {"type": "integer"}, "end": "}"}], "triggers": ["a{"]}
    manager = _manager_with(hf_tokenizer, StructuredOutputsParams(structural_tag=json.dumps(tag)))
    _spell(manager, "s", "xyz a{")
    allowed = allowed_tokens(manager.bitmask(["s"]), MODEL_VOCAB, "cpu")[0]
    assert {VOCAB[i] for i in allowed.nonzero().flatten().tolist()} <= set("-0123456789")


def test_apply_bitmask_touches_only_constrained_rows() -> None:
    words = (MODEL_VOCAB + 31) // 32
    data = bytearray(words * 4)
    data[0] = 0b00000110  # tokens 1 and 2
    bitmask = GrammarBitmask(["b"], words, bytes(data))
    logits = torch.randn(2, MODEL_VOCAB, dtype=torch.bfloat16)
    masked = apply_grammar_bitmask(logits, bitmask, [1])
    assert masked.dtype == torch.float32 and torch.equal(masked[0], logits[0].float())
    assert torch.isfinite(masked[1]).tolist() == [i in (1, 2) for i in range(MODEL_VOCAB)]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "exactly one"),
        ({"regex": "a", "choice": ["a"]}, "exactly one"),
        ({"choice": []}, "structured_outputs.choice"),
        ({"choice": [1]}, "structured_outputs.choice"),
        ({"json": 5}, "structured_outputs.json"),
    ],
)
def test_structured_outputs_params_validation(values, message) -> None:
    with pytest.raises(ValueError, match=message):
        StructuredOutputsParams(**values)
    with pytest.raises(ValueError, match="structured_outputs"):
        SamplingParams(structured_outputs="json")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"backend": "xgrammar"}', "xgrammar"),
        ('{"backend": "guidance", "colour": 1}', "structured_outputs_config.colour"),
        ('{"compile_timeout_s": 0}', "compile_timeout_s"),
        ("[1]", "JSON object"),
    ],
)
def test_structured_outputs_config_refuses_by_name(text, message) -> None:
    with pytest.raises(ValueError, match=message):
        StructuredOutputsConfig.from_json(text)
    assert StructuredOutputsConfig.from_json('{"backend": "guidance"}').backend == "guidance"


def test_c_kernel_and_torch_path_mask_alike(monkeypatch) -> None:
    import numpy as np

    from pagedserve.ops import cpu as cpu_ops

    vocab, words = 100, 3  # 4 logit columns past the 96 tokens the mask covers: never allowed
    data = (
        np.random.default_rng(0)
        .integers(-(2**31), 2**31 - 1, size=(2, words), dtype=np.int64)
        .astype(np.int32)
    )
    data[1, 0] = -1  # a word with all 32 tokens allowed
    bitmask = GrammarBitmask(["x", "y"], words, data.tobytes())
    logits = torch.randn(3, vocab)
    fast = apply_grammar_bitmask(logits, bitmask, [2, 0])
    monkeypatch.setattr(cpu_ops, "apply_token_bitmask", lambda *args: False)
    slow = apply_grammar_bitmask(logits, bitmask, [2, 0])
    assert torch.equal(fast, slow) and torch.equal(fast[1], logits[1])
    assert torch.isinf(fast[0, 96:]).all() and torch.isfinite(fast[0, :32]).all()


def test_a_draft_gets_a_mask_row_per_position_up_to_the_first_token_the_grammar_refuses(hf_tokenizer) -> None:
    manager = _manager_with(hf_tokenizer, StructuredOutputsParams(regex="ab(c|d)e"))
    tokens = [VOCAB.index(c) for c in "abxe"]
    assert manager.draft_prefix("s", tokens) == tokens[:2]  # "x" is refused: the draft is cut there
    mask = manager.bitmask(["s"], {"s": tokens})
    assert mask is not None and mask.seq_ids == ["s"] * 3 and mask.positions == [0, 1, 2]
    allowed = allowed_tokens(mask, MODEL_VOCAB, "cpu")
    expect = [
        {"a"},
        {"b"},
        {"c", "d"},
    ]  # the state after "", "a", "ab"; the row after "x" would never be kept
    assert [{VOCAB[t] for t in row.nonzero().flatten().tolist()} for row in allowed] == expect
    # Rolled back: the matcher still stands at the start, and the kept tokens are accepted one by one.
    assert _spell(manager, "s", "abd") is False and _spell(manager, "s", "e") is True


def test_no_draft_while_a_reasoning_gate_reads_the_tokens(hf_tokenizer) -> None:
    gate = ReasoningGate(end_token_ids=[VOCAB.index("z")], thinking=True)
    manager = _manager_with(hf_tokenizer, StructuredOutputsParams(regex="ab"), gate=gate)
    assert manager.draft_prefix("s", [VOCAB.index("a")]) == []
    assert manager.draft_prefix("unconstrained", [5, 6]) == [5, 6]
