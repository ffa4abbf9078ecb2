"""allowed_token_ids, bad_words and logit_bias in the sampler (vLLM's semantics), and their validation."""

from __future__ import annotations

import pytest
import torch

from pagedserve.sample import SamplingMetadata
from pagedserve.sampling_params import SamplingParams

from .helpers import make_row, sample

VOCAB = 16
DRAWS = 4000


def logits_for(rows: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, VOCAB, generator=torch.Generator().manual_seed(seed)) * 2


def bad_words_params(words: list[list[int]], **fields: object) -> SamplingParams:
    params = SamplingParams(**fields)  # type: ignore[arg-type]
    params.bad_words_token_ids = words  # what the input processor fills from bad_words with the tokenizer
    return params


def test_allowed_token_ids_restrict_greedy_and_random_rows_only() -> None:
    logits = logits_for(3)
    allowed = [3, 7, 11]
    rows = [
        make_row(SamplingParams(temperature=0.0, allowed_token_ids=allowed)),
        make_row(SamplingParams(temperature=0.0)),
        make_row(SamplingParams(temperature=1.0, seed=5, allowed_token_ids=allowed)),
    ]
    tokens = sample(logits, rows).sampled_token_ids.tolist()
    assert tokens[0] == allowed[int(logits[0, allowed].argmax())]
    assert tokens[1] == int(logits[1].argmax())  # a row without the field is untouched
    assert tokens[2] in allowed

    batch = logits[2:3].repeat(DRAWS, 1)
    torch.manual_seed(0)
    drawn = sample(batch, [make_row(SamplingParams(allowed_token_ids=allowed))] * DRAWS).sampled_token_ids
    assert set(drawn.tolist()) == set(allowed)  # each allowed token is drawn, nothing else


def test_logit_bias_shifts_the_distribution_by_its_values() -> None:
    logits = logits_for(1)
    best = int(logits[0].argmax())
    forced = (best + 1) % VOCAB
    out = sample(logits, [make_row(SamplingParams(temperature=0.0, logit_bias={forced: 100.0}))])
    assert out.sampled_token_ids.tolist() == [forced]
    out = sample(logits, [make_row(SamplingParams(temperature=0.0, logit_bias={best: -100.0}))])
    assert out.sampled_token_ids.tolist() == [int(logits[0].topk(2).indices[1])]

    bias = {0: 3.0, 5: -2.0, 9: 1.5}
    shifted = logits[0].clone()
    for token, value in bias.items():
        shifted[token] += value
    expected = torch.softmax(shifted.double(), dim=-1)
    torch.manual_seed(1)
    drawn = sample(
        logits.repeat(DRAWS, 1), [make_row(SamplingParams(logit_bias=bias))] * DRAWS
    ).sampled_token_ids
    observed = torch.bincount(drawn, minlength=VOCAB).double() / DRAWS
    sigma = (expected * (1 - expected) / DRAWS).sqrt()
    assert torch.all((observed - expected).abs() <= 5 * sigma + 1e-9), (observed, expected)


def test_bad_words_ban_their_last_token_only_after_the_rest() -> None:
    logits = torch.zeros(1, VOCAB)
    logits[0, 4] = 5.0  # greedy would pick 4
    logits[0, 6] = 4.0
    one_token = bad_words_params([[4]], temperature=0.0)
    assert sample(logits, [make_row(one_token)]).sampled_token_ids.tolist() == [6]
    two_tokens = bad_words_params([[9, 4]], temperature=0.0)
    # 4 is banned right after 9, allowed anywhere else (and at the start of the output).
    assert sample(logits, [make_row(two_tokens, output=[2, 9])]).sampled_token_ids.tolist() == [6]
    assert sample(logits, [make_row(two_tokens, output=[9, 2])]).sampled_token_ids.tolist() == [4]
    assert sample(logits, [make_row(two_tokens, output=[])]).sampled_token_ids.tolist() == [4]
    # The prompt is not part of the history a bad word is matched against (vLLM: output tokens only).
    assert sample(logits, [make_row(two_tokens, prompt=[9], output=[])]).sampled_token_ids.tolist() == [4]


def test_controls_compose_with_min_tokens_and_penalties_and_logprobs_stay_raw() -> None:
    logits = logits_for(2, seed=3)
    params = bad_words_params(
        [[1]], temperature=0.0, allowed_token_ids=[1, 2, 3], logit_bias={3: 50.0}, repetition_penalty=1.5,
        logprobs=2,
    )  # fmt: skip
    out = sample(
        logits, [make_row(params, output=[3]), make_row(SamplingParams(temperature=0.0, logprobs=2))]
    )
    assert out.sampled_token_ids.tolist() == [3, int(logits[1].argmax())]
    raw = torch.log_softmax(logits[0], dim=-1)
    assert out.logprobs is not None and out.logprob_token_ids is not None
    # The sampled token's logprob is the model's, before the bias or the mask (vLLM's raw_logprobs).
    assert out.logprobs[0, 0].item() == pytest.approx(raw[3].item(), abs=1e-5)
    assert out.logprob_token_ids[0, 1:].tolist() == raw.topk(2).indices.tolist()


def test_metadata_builds_controls_only_when_a_row_uses_them() -> None:
    plain = SamplingMetadata.build([make_row(SamplingParams(temperature=0.0))], VOCAB, "cpu")
    assert plain.token_controls is None and plain.no_logit_processing
    idle_bad_word = bad_words_params([[9, 4]], temperature=0.0)
    assert SamplingMetadata.build([make_row(idle_bad_word, output=[1])], VOCAB, "cpu").token_controls is None
    biased = SamplingMetadata.build(
        [make_row(SamplingParams(temperature=0.0, logit_bias={2: 1.0}))], VOCAB, "cpu"
    )
    assert biased.token_controls is not None and not biased.no_logit_processing


def test_logits_are_not_modified() -> None:
    logits = logits_for(2)
    before = logits.clone()
    params = SamplingParams(temperature=0.0, allowed_token_ids=[1], logit_bias={2: 5.0})
    sample(logits, [make_row(params), make_row(params)])
    assert torch.equal(logits, before)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"logit_bias": {-1: 1.0}}, "logit_bias"),
        ({"logit_bias": {"3": 1.0}}, "logit_bias"),
        ({"logit_bias": {3: float("inf")}}, "logit_bias"),
        ({"logit_bias": [3]}, "logit_bias"),
        ({"allowed_token_ids": []}, "allowed_token_ids"),
        ({"allowed_token_ids": [1, -2]}, "allowed_token_ids"),
        ({"bad_words": ["ok", ""]}, "bad_words"),
        ({"bad_words": "word"}, "bad_words"),
    ],
)
def test_bad_values_name_the_field(fields: dict, param: str) -> None:
    with pytest.raises(ValueError, match=param) as caught:
        SamplingParams(**fields)
    assert caught.value.param == param  # type: ignore[attr-defined]
