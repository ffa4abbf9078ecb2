"""Repetition / frequency / presence penalties against a hand-written reference, and min_tokens masking."""

from __future__ import annotations

import math

import torch

from pagedserve.sample import SamplingMetadata
from pagedserve.sample.penalties import apply_min_tokens, apply_penalties
from pagedserve.sampling_params import SamplingParams

from .helpers import make_row, sample


def reference_penalised(
    logits: list[float], prompt: list[int], output: list[int], p: SamplingParams
) -> list[float]:
    """vLLM's rules written one token at a time."""
    result = list(logits)
    for token in range(len(result)):
        if token in prompt or token in output:
            value = result[token]
            result[token] = value / p.repetition_penalty if value > 0 else value * p.repetition_penalty
        count = output.count(token)
        result[token] -= p.frequency_penalty * count
        if count:
            result[token] -= p.presence_penalty
    return result


def penalised(logits: torch.Tensor, rows: list) -> torch.Tensor:
    metadata = SamplingMetadata.build(rows, logits.shape[-1], "cpu")
    assert metadata.penalties is not None
    return apply_penalties(logits.clone(), metadata.penalties)


def test_penalties_match_the_reference() -> None:
    vocab = 10
    logits = (
        torch.tensor([[2.0, -1.0, 0.5, -3.0, 0.0, 1.0, -0.5, 4.0, -2.0, 3.0]] * 4, dtype=torch.float32)
        + torch.arange(4).unsqueeze(1) * 0.25
    )
    cases = [
        (SamplingParams(repetition_penalty=1.5), [0, 1, 4], [3, 3, 7]),
        (SamplingParams(frequency_penalty=0.7), [0, 1], [2, 2, 2, 9]),
        (SamplingParams(presence_penalty=-0.4), [5], [5, 6, 6]),
        (
            SamplingParams(repetition_penalty=0.8, frequency_penalty=-1.0, presence_penalty=1.5),
            [1, 8, 8],
            [8, 0, 1, 1],
        ),
    ]
    rows = [make_row(p, prompt, output) for p, prompt, output in cases]
    actual = penalised(logits, rows)
    for row, (p, prompt, output) in enumerate(cases):
        expected = reference_penalised(logits[row].tolist(), prompt, output, p)
        # float32 arithmetic against Python doubles: equal up to rounding
        assert torch.allclose(actual[row].double(), torch.tensor(expected, dtype=torch.float64), atol=1e-6), (
            row,
            p,
        )
    assert vocab == logits.shape[-1]


def test_rows_without_penalties_are_untouched_in_a_penalised_batch() -> None:
    logits = torch.randn(3, 50)
    rows = [
        make_row(SamplingParams(), [1, 2, 3], [4, 5]),
        make_row(SamplingParams(repetition_penalty=2.0), [1, 2, 3], [4, 5]),
        make_row(SamplingParams(temperature=0.0), [6], [7, 7]),
    ]
    actual = penalised(logits, rows)
    assert torch.equal(actual[0], logits[0]) and torch.equal(actual[2], logits[2])
    assert not torch.equal(actual[1], logits[1])


def test_tokens_outside_the_vocabulary_are_ignored() -> None:
    logits = torch.ones(1, 8)
    row = make_row(SamplingParams(repetition_penalty=2.0, frequency_penalty=1.0), [3, 100], [5, 8, 999])
    actual = penalised(logits, [row])
    assert actual[0].tolist() == [1, 1, 1, 0.5, 1, 0.5 - 1.0, 1, 1]


def test_no_metadata_penalties_when_every_row_is_neutral() -> None:
    rows = [make_row(SamplingParams(repetition_penalty=1.0), [1], [2])] * 3
    assert SamplingMetadata.build(rows, 10, "cpu").penalties is None


def test_greedy_sampling_sees_the_penalties() -> None:
    # Token 4 leads, but it was generated three times: a frequency penalty makes token 2 the argmax.
    logits = torch.tensor([[0.0, 0.0, 1.0, 0.0, 1.5]])
    params = SamplingParams(temperature=0.0, frequency_penalty=0.3)
    out = sample(logits, [make_row(params, [0], [4, 4, 4])])
    assert out.sampled_token_ids.tolist() == [2]
    # Logprobs still describe the raw model distribution.
    params = SamplingParams(temperature=0.0, frequency_penalty=0.3, logprobs=1)
    out = sample(logits, [make_row(params, [0], [4, 4, 4])])
    assert out.logprob_token_ids is not None and out.logprobs is not None
    assert out.logprob_token_ids.tolist() == [[2, 4]]
    assert math.isclose(out.logprobs[0, 0].item(), torch.log_softmax(logits, -1)[0, 2].item(), rel_tol=1e-6)


def test_min_tokens_masks_stop_tokens_until_reached() -> None:
    vocab = 6
    logits = torch.tensor([[0.0, 0.0, 9.0, 0.0, 8.0, 0.0]] * 3)
    params = SamplingParams(temperature=0.0, min_tokens=3, stop_token_ids=[4])
    params.all_stop_token_ids = {2, 4}  # EOS 2 filled in by the engine, plus the user's stop token
    rows = [make_row(params, [0], [1] * n) for n in (0, 2, 3)]
    metadata = SamplingMetadata.build(rows, vocab, "cpu")
    assert metadata.min_tokens_mask is not None
    masked = apply_min_tokens(logits.clone(), metadata.min_tokens_mask)
    assert torch.isinf(masked[0, 2]) and torch.isinf(masked[0, 4]) and torch.isinf(masked[1, 2])
    assert torch.equal(masked[2], logits[2])
    assert sample(logits, rows).sampled_token_ids.tolist() == [0, 0, 2]


def test_min_tokens_with_random_sampling_never_emits_a_stop_token() -> None:
    logits = torch.tensor([[5.0, 0.0, 0.0, 5.0]]).repeat(500, 1)
    params = SamplingParams(temperature=1.0, min_tokens=1)
    params.all_stop_token_ids = {0, 3, 77}  # 77 is past the vocabulary: ignored, not an error
    torch.manual_seed(0)
    tokens = sample(logits, [make_row(params)] * 500).sampled_token_ids
    assert set(tokens.tolist()) <= {1, 2}


def test_min_tokens_masks_eos_even_with_ignore_eos() -> None:
    """vLLM's rule: min_tokens means that many tokens before any EOS, ignore_eos or not."""
    params = SamplingParams(min_tokens=4, ignore_eos=True)
    params.eos_token_ids = {2}  # the engine fills it; all_stop_token_ids stays empty under ignore_eos
    mask = SamplingMetadata.build([make_row(params)], 10, "cpu").min_tokens_mask
    assert mask is not None and mask[1].tolist() == [2]
    done = SamplingMetadata.build([make_row(params, [0], [1] * 4)], 10, "cpu").min_tokens_mask
    assert done is None
