"""Structured outputs after reasoning (vLLM's, with --reasoning-parser): a constrained sequence's grammar waits
until the model closed its think block. Real llguidance matchers over a one-character vocabulary; "<think>" is
played by "q" (one token, as in Qwen3's vocabulary) and "</think>" by "xyz"."""

from __future__ import annotations

from pagedserve.core.scheduler_output import ReasoningGate
from pagedserve.engine.input_processor import reasoning_gate
from pagedserve.sample.grammar_mask import allowed_tokens
from pagedserve.sampling_params import StructuredOutputsParams

from .test_grammar import MODEL_VOCAB, VOCAB, _manager_with, _spell, hf_tokenizer  # noqa: F401

START = VOCAB.index("q")
END = [VOCAB.index(c) for c in "xyz"]
YES_NO = StructuredOutputsParams(choice=["yes", "no"])


def allowed(manager, seq_id: str = "s") -> set[str]:
    mask = manager.bitmask([seq_id])
    assert mask is not None
    row = allowed_tokens(mask, MODEL_VOCAB, "cpu")[0]
    return {VOCAB[i] for i in range(len(VOCAB)) if row[i]}


def think(manager, text: str) -> None:
    for char in text:
        assert manager.bitmask(["s"]) is None  # nothing masked while reasoning
        assert manager.accept("s", VOCAB.index(char)) is False


def test_the_grammar_starts_after_the_block_closes(hf_tokenizer) -> None:  # noqa: F811
    manager = _manager_with(hf_tokenizer, YES_NO, gate=ReasoningGate(END))  # deepseek_r1: inside the block
    think(manager, "ab xy x and xyz")  # "xy" then "x": not yet the end; "xyz" ends it
    assert manager.bitmask(["s"]) is not None and "q" not in allowed(manager)
    assert _spell(manager, "s", "no")  # the grammar saw none of the reasoning


def test_an_undecided_first_token_may_open_the_block_or_start_the_answer(hf_tokenizer) -> None:  # noqa: F811
    for opens in (True, False):
        manager = _manager_with(hf_tokenizer, YES_NO, gate=ReasoningGate(END, START, thinking=False))
        first = allowed(manager)
        assert (
            "q" in first and "y" in first and "a" not in first
        )  # the grammar's first tokens, and the opener
        if opens:
            assert manager.accept("s", START) is False
            think(manager, "hmm xyz")
        assert _spell(manager, "s", "yes")


def test_the_gate_is_decided_from_the_prompt() -> None:
    deepseek, qwen3 = ("deepseek_r1", [1], [2, 3]), ("qwen3", [1], [2, 3])
    assert reasoning_gate(None, [9]) is None
    assert (
        reasoning_gate(qwen3, [9, 1, 5, 2, 3, 9]) is None
    )  # the prompt closed the block: enable_thinking false
    assert reasoning_gate(deepseek, [9, 1, 5, 2, 3, 1]) == ReasoningGate(
        [2, 3]
    )  # reopened after it: thinking
    assert reasoning_gate(deepseek, [9, 9]) == ReasoningGate([2, 3])  # R1: always inside the block
    assert reasoning_gate(qwen3, [9, 9]) == ReasoningGate([2, 3], start_token_id=1, thinking=False)
    assert reasoning_gate(qwen3, [9, 1]) == ReasoningGate([2, 3])  # the template opened it (Qwen3.5 style)
    assert reasoning_gate(("qwen3", [1, 4], [2, 3]), [9]) is None  # "<think>" not one token: grammar at once
