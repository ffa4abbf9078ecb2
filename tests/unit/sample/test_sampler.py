"""Sampler: greedy, temperature and the truncation filters, seeded reproducibility inside any batch."""

from __future__ import annotations

import pytest
import torch

from pagedserve.sample import Sampler, SamplingMetadata, SamplingRow, make_generator
from pagedserve.sampling_params import SamplingParams

from .helpers import make_row, reference_distribution, sample

VOCAB = 12
DRAWS = 6000


def fixed_logits(vocab: int = VOCAB, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(vocab, generator=generator) * 1.5


def frequencies(logits: torch.Tensor, params: SamplingParams, draws: int = DRAWS) -> torch.Tensor:
    """Empirical distribution of `draws` rows that all hold the same logits and parameters."""
    torch.manual_seed(1234)
    batch = logits.unsqueeze(0).repeat(draws, 1)
    tokens = sample(batch, [make_row(params) for _ in range(draws)]).sampled_token_ids
    return torch.bincount(tokens, minlength=logits.shape[-1]).double() / draws


def assert_matches_distribution(observed: torch.Tensor, expected: torch.Tensor, draws: int = DRAWS) -> None:
    # Never a removed token; every reasonably likely token seen; each frequency within 5 standard deviations.
    assert torch.all(observed[expected == 0] == 0), (observed, expected)
    assert torch.all(observed[expected * draws >= 10] > 0), (observed, expected)
    sigma = (expected * (1 - expected) / draws).sqrt()
    assert torch.all((observed - expected).abs() <= 5 * sigma + 1e-9), (observed, expected)


def test_greedy_is_argmax_and_leaves_logits_untouched() -> None:
    logits = torch.randn(7, 300)
    before = logits.clone()
    out = sample(logits, [make_row(SamplingParams(temperature=0.0)) for _ in range(7)])
    assert torch.equal(out.sampled_token_ids, logits.argmax(dim=-1))
    assert out.sampled_token_ids.dtype == torch.int64
    assert out.logprobs is None and out.logprob_token_ids is None and out.sampled_token_ranks is None
    assert torch.equal(logits, before)


def test_greedy_accepts_half_precision_logits() -> None:
    logits = torch.randn(5, 100).to(torch.bfloat16)
    out = sample(logits, [make_row(SamplingParams(temperature=0.0, repetition_penalty=1.2))] * 5)
    assert out.sampled_token_ids.shape == (5,)
    out = sample(logits, [make_row(SamplingParams(temperature=0.0))] * 5)
    assert torch.equal(out.sampled_token_ids, logits.argmax(dim=-1))


def test_tiny_temperature_is_greedy() -> None:
    logits = torch.randn(4, 50)
    out = sample(logits, [make_row(SamplingParams(temperature=5e-6)) for _ in range(4)])
    assert torch.equal(out.sampled_token_ids, logits.argmax(dim=-1))


def test_greedy_rows_in_a_mixed_batch_stay_argmax() -> None:
    logits = torch.randn(6, 40)
    params = [SamplingParams(temperature=0.0 if i % 2 else 1.5, top_p=0.5) for i in range(6)]
    out = sample(logits, [make_row(p) for p in params])
    greedy_rows = [1, 3, 5]
    assert torch.equal(out.sampled_token_ids[greedy_rows], logits[greedy_rows].argmax(dim=-1))


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=1.0),
        SamplingParams(temperature=0.5),
        SamplingParams(temperature=2.0),
        SamplingParams(temperature=1.0, top_k=3),
        SamplingParams(temperature=1.0, top_p=0.6),
        SamplingParams(temperature=1.0, min_p=0.2),
        SamplingParams(temperature=0.8, top_k=5, top_p=0.7),
        SamplingParams(temperature=1.3, top_k=6, top_p=0.8, min_p=0.05),
    ],
    ids=lambda p: f"t{p.temperature}-k{p.top_k}-p{p.top_p}-minp{p.min_p}",
)
def test_random_rows_follow_the_filtered_distribution(params: SamplingParams) -> None:
    logits = fixed_logits()
    assert_matches_distribution(frequencies(logits, params), reference_distribution(logits, params))


def test_top_k_keeps_exactly_k_tokens() -> None:
    logits = fixed_logits()
    observed = frequencies(logits, SamplingParams(top_k=4, temperature=3.0))
    assert set(torch.nonzero(observed).flatten().tolist()) == set(logits.topk(4).indices.tolist())


def test_top_k_at_or_above_vocab_is_no_filter() -> None:
    logits = fixed_logits()
    for top_k in (VOCAB, VOCAB + 5, -1, 0):
        params = SamplingParams(top_k=top_k, temperature=3.0)
        assert_matches_distribution(frequencies(logits, params), reference_distribution(logits, params))


def test_filters_differ_per_row_in_one_batch() -> None:
    logits = fixed_logits()
    draws = 3000
    params = [SamplingParams(top_k=2), SamplingParams(top_p=0.3), SamplingParams(min_p=0.5), SamplingParams()]
    rows = [make_row(params[i % 4]) for i in range(4 * draws)]
    torch.manual_seed(5)
    tokens = sample(logits.unsqueeze(0).repeat(4 * draws, 1), rows).sampled_token_ids.view(draws, 4)
    for column, p in enumerate(params):
        observed = torch.bincount(tokens[:, column], minlength=VOCAB).double() / draws
        assert_matches_distribution(observed, reference_distribution(logits, p), draws)


def test_top_p_on_a_large_vocabulary_matches_a_full_sort() -> None:
    # Rows whose nucleus is wider than the first candidate sets exercise the CPU retry path.
    vocab = 49152
    generator = torch.Generator().manual_seed(3)
    scales = [0.1, 1.0, 3.0, 8.0]  # flat to peaked: nucleus from ~all tokens down to a handful
    logits = torch.stack([torch.randn(vocab, generator=generator) * s for s in scales])
    params = [SamplingParams(top_p=0.9), SamplingParams(top_p=0.5, top_k=700), SamplingParams(top_p=0.95)]
    from pagedserve.sample.filters import apply_top_k_top_p

    for p in params:
        rows = [make_row(p) for _ in scales]
        metadata = SamplingMetadata.build(rows, vocab, "cpu")
        weights = (logits - logits.amax(dim=-1, keepdim=True)).exp()
        filtered = apply_top_k_top_p(weights, metadata.top_k, metadata.top_p, metadata.max_top_k)
        for row in range(len(scales)):
            expected = reference_distribution(logits[row], p) > 0
            kept = filtered[row] > 0
            # float32 against float64 cumulative sums may differ on the one boundary token
            assert (kept ^ expected).sum() <= 1, (p, scales[row], kept.sum(), expected.sum())


def test_seed_gives_the_same_tokens_alone_and_anywhere_in_a_batch() -> None:
    vocab = 500
    steps = 6
    generator = torch.Generator().manual_seed(11)
    step_logits = [torch.randn(vocab, generator=generator) for _ in range(steps)]
    seeded = SamplingParams(temperature=0.9, top_p=0.95, top_k=100, seed=42)

    def run(batch_params: list[SamplingParams], seeded_position: int) -> list[int]:
        # Fresh generators per run, as a new request would get; others use the default generator.
        rows = [make_row(p) for p in batch_params]
        rows.insert(seeded_position, make_row(seeded))
        tokens = []
        for logits in step_logits:
            batch = torch.randn(len(rows), vocab)
            batch[seeded_position] = logits
            metadata = SamplingMetadata.build(rows, vocab, "cpu")
            tokens.append(int(Sampler()(batch, metadata).sampled_token_ids[seeded_position]))
        return tokens

    alone = run([], 0)
    others = [
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=1.0),
        SamplingParams(temperature=0.7, top_p=0.5, seed=7),
        SamplingParams(temperature=1.2, min_p=0.1, repetition_penalty=1.3, logprobs=3),
    ]
    assert run(others, 2) == alone
    assert run(others[::-1], 4) == alone
    assert run(others[:1], 1) == alone
    # A different seed gives a different sequence (6 steps over ~100 tokens: a collision is negligible).
    different = SamplingParams(temperature=0.9, top_p=0.95, top_k=100, seed=43)
    rows = [make_row(different)]
    other_tokens = [int(sample(logits.unsqueeze(0), rows).sampled_token_ids[0]) for logits in step_logits]
    assert other_tokens != alone


def test_unseeded_rows_follow_the_default_generator() -> None:
    logits = torch.randn(16, 1000)
    rows = [make_row(SamplingParams(temperature=1.0)) for _ in range(16)]
    torch.manual_seed(99)
    first = sample(logits, rows).sampled_token_ids
    torch.manual_seed(99)
    assert torch.equal(sample(logits, rows).sampled_token_ids, first)


def test_negative_seed_is_accepted() -> None:
    row = SamplingRow(SamplingParams(seed=-5), [1], [], make_generator(-5, "cpu"))
    out = sample(torch.randn(1, 30), [row])
    assert 0 <= int(out.sampled_token_ids[0]) < 30


def test_removed_tokens_are_never_sampled() -> None:
    # Extremes: one token with all the mass, logits of -inf, huge and tiny temperatures.
    logits = torch.full((4, 64), -1e4)
    logits[:, 7] = 1e4
    logits[1, 20:] = float("-inf")
    rows = [make_row(SamplingParams(temperature=t)) for t in (1e-4, 1.0, 100.0, 2.0)]
    torch.manual_seed(0)
    for _ in range(20):
        assert sample(logits, rows).sampled_token_ids.tolist() == [7, 7, 7, 7]


def test_metadata_skips_what_no_row_uses() -> None:
    greedy = SamplingMetadata.build([make_row(SamplingParams(temperature=0.0))] * 3, 100, "cpu")
    assert greedy.all_greedy and not greedy.all_random and greedy.no_logit_processing
    assert greedy.temperature is None and greedy.top_k is None and greedy.top_p is None
    assert greedy.min_p is None and greedy.penalties is None and greedy.max_num_logprobs is None
    # Filters on greedy rows cannot change the argmax, so they are not built.
    filtered_greedy = SamplingParams(temperature=0.0, top_k=5, top_p=0.5, min_p=0.3)
    assert SamplingMetadata.build([make_row(filtered_greedy)], 100, "cpu").top_p is None

    mixed = SamplingMetadata.build(
        [make_row(SamplingParams(temperature=0.0)), make_row(SamplingParams(top_k=5, logprobs=2))], 100, "cpu"
    )
    assert not mixed.all_greedy and not mixed.all_random
    assert mixed.random_rows is not None and mixed.random_rows.tolist() == [1]
    assert mixed.top_k is not None and mixed.top_k.tolist() == [5] and mixed.max_top_k == 5
    assert mixed.top_p is None and mixed.max_num_logprobs == 2

    with pytest.raises(ValueError, match="rows"):
        SamplingMetadata.build([], 100, "cpu")


def test_wrong_logits_shape_is_a_clear_error() -> None:
    metadata = SamplingMetadata.build([make_row(SamplingParams())] * 2, 10, "cpu")
    with pytest.raises(ValueError, match="logits"):
        Sampler()(torch.randn(3, 10), metadata)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_random_and_mixed_batches_leave_logits_untouched(dtype: torch.dtype) -> None:
    logits = torch.randn(4, 300).to(dtype)
    before = logits.clone()
    params = [
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=0.7, top_p=0.8, min_p=0.01),
        SamplingParams(temperature=1.0, top_k=10, seed=3, logprobs=2),
        SamplingParams(temperature=1.0, repetition_penalty=1.3),
    ]
    for rows in ([make_row(p, [1, 2], [3]) for p in params], [make_row(params[1])] * 4):
        out = sample(logits, rows)
        assert out.sampled_token_ids.shape == (4,)
        assert torch.equal(logits, before)
