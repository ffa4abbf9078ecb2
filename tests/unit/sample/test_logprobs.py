"""Sample and prompt logprobs: raw log_softmax values, sorted top-K, the chosen token's rank."""

from __future__ import annotations

import pytest
import torch

from pagedserve.sample import compute_prompt_logprobs
from pagedserve.sampling_params import SamplingParams

from .helpers import make_row, sample


def expected_rank(logprobs: torch.Tensor, token: int) -> int:
    order = torch.argsort(logprobs, descending=True).tolist()
    return order.index(token) + 1


def test_sample_logprobs_are_raw_sorted_and_ranked() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 200, generator=generator) * 2
    params = [
        SamplingParams(temperature=0.0, logprobs=3),
        SamplingParams(temperature=0.5, logprobs=0, repetition_penalty=1.7),
        SamplingParams(temperature=2.0, top_k=20, logprobs=5),
        SamplingParams(temperature=1.0),  # asks for none: placeholders
        SamplingParams(temperature=0.0, presence_penalty=2.0, logprobs=1),
    ]
    rows = [make_row(p, [1, 2, 3], [4, 5, 5]) for p in params]
    out = sample(logits, rows)
    assert (
        out.logprob_token_ids is not None and out.logprobs is not None and out.sampled_token_ranks is not None
    )
    assert out.logprob_token_ids.shape == (5, 6) and out.logprobs.shape == (5, 6)
    assert out.logprobs.dtype == torch.float32 and out.sampled_token_ranks.dtype == torch.int64

    raw = torch.log_softmax(logits.double(), dim=-1)
    assert out.logprob_token_ids[3].tolist() == [int(out.sampled_token_ids[3])] * 6
    assert torch.isnan(out.logprobs[3]).all() and int(out.sampled_token_ranks[3]) == 0
    for row in (0, 1, 2, 4):
        sampled = int(out.sampled_token_ids[row])
        assert int(out.logprob_token_ids[row, 0]) == sampled
        assert torch.allclose(out.logprobs[row].double(), raw[row, out.logprob_token_ids[row]], atol=1e-5)
        top = raw[row].topk(5)
        assert out.logprob_token_ids[row, 1:].tolist() == top.indices.tolist()
        assert torch.all(out.logprobs[row, 1:-1] >= out.logprobs[row, 2:])
        assert int(out.sampled_token_ranks[row]) == expected_rank(raw[row], sampled)


def test_every_row_asking_gets_real_values() -> None:
    logits = torch.randn(3, 80)
    params = [SamplingParams(temperature=t, logprobs=k) for t, k in ((0.0, 0), (1.0, 2), (0.5, 1))]
    out = sample(logits, [make_row(p) for p in params])
    assert out.logprobs is not None and out.sampled_token_ranks is not None
    assert out.logprobs.shape == (3, 3) and not torch.isnan(out.logprobs).any()
    assert bool((out.sampled_token_ranks >= 1).all())


def test_greedy_fast_path_reports_rank_one() -> None:
    logits = torch.randn(4, 64)
    out = sample(logits, [make_row(SamplingParams(temperature=0.0, logprobs=2))] * 4)
    assert out.sampled_token_ranks is not None and out.sampled_token_ranks.tolist() == [1, 1, 1, 1]
    assert out.logprob_token_ids is not None
    assert torch.equal(out.logprob_token_ids[:, 0], out.logprob_token_ids[:, 1])


def test_logprobs_of_half_precision_logits_are_float32() -> None:
    logits = torch.randn(2, 50).to(torch.float16)
    out = sample(logits, [make_row(SamplingParams(temperature=0.0, logprobs=4))] * 2)
    assert out.logprobs is not None and out.logprobs.dtype == torch.float32
    expected = torch.log_softmax(logits.float(), dim=-1).topk(4).values
    assert torch.allclose(out.logprobs[:, 1:], expected, atol=1e-5)


def test_prompt_logprobs() -> None:
    generator = torch.Generator().manual_seed(4)
    logits = torch.randn(6, 40, generator=generator)
    targets = torch.tensor([3, 17, 0, 39, 3, 8])
    token_ids, logprobs, ranks = compute_prompt_logprobs(logits, targets, 3)
    raw = torch.log_softmax(logits.double(), dim=-1)
    assert token_ids.shape == (6, 4) and logprobs.shape == (6, 4) and ranks.shape == (6,)
    assert token_ids[:, 0].tolist() == targets.tolist()
    for position in range(6):
        assert torch.allclose(logprobs[position].double(), raw[position, token_ids[position]], atol=1e-5)
        assert token_ids[position, 1:].tolist() == raw[position].topk(3).indices.tolist()
        assert int(ranks[position]) == expected_rank(raw[position], int(targets[position]))

    only_targets = compute_prompt_logprobs(logits, targets, 0)
    assert only_targets[0].shape == (6, 1) and torch.equal(only_targets[1], logprobs[:, :1])


def test_prompt_logprobs_reject_bad_shapes() -> None:
    with pytest.raises(ValueError, match="target_token_ids"):
        compute_prompt_logprobs(torch.randn(4, 10), torch.tensor([1, 2]), 1)
    with pytest.raises(ValueError, match="num_logprobs"):
        compute_prompt_logprobs(torch.randn(2, 10), torch.tensor([1, 2]), 11)
