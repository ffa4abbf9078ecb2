"""The n-gram proposer (speculative decoding's drafts): longest suffix first, earliest earlier match, capped."""

from __future__ import annotations

import random

import pytest

from pagedserve.core.ngram_proposer import NgramProposer


def reference(
    tokens: list[int], k: int, lookup_min: int, lookup_max: int, limit: int | None = None
) -> list[int]:
    """The rule spelled out: for n from lookup_max down, the first i with tokens[i : i + n] equal to the last n
    tokens and ending before the last token; the k tokens after it."""
    k = k if limit is None else min(k, limit)
    num = len(tokens)
    for n in range(min(lookup_max, num - 1), lookup_min - 1, -1):
        suffix = tokens[num - n :]
        for i in range(0, num - n):
            if tokens[i : i + n] == suffix:
                return tokens[i + n : i + n + k] if k > 0 else []
    return []


def test_vllms_documented_example() -> None:
    # vLLM's docstring: [1, 2, 3, 4, 2, 3], n-grams of 2 to 3, k = 4 -> [4, 2, 3] (only three follow the match).
    assert NgramProposer(4, 2, 3).propose([1, 2, 3, 4, 2, 3]) == [4, 2, 3]


def test_the_longest_suffix_wins_over_an_earlier_shorter_match() -> None:
    tokens = [7, 9, 50, 1, 7, 8, 9, 60, 61, 7, 8, 9]
    # [8, 9] first occurs at 5 (followed by 60), [9] alone at 1 (followed by 50): the 3-gram [7, 8, 9] decides.
    assert NgramProposer(2, 1, 3).propose(tokens) == [60, 61]
    assert NgramProposer(2, 1, 1).propose(tokens) == [50, 1]


def test_the_earliest_match_is_used_and_the_draft_is_capped() -> None:
    tokens = [5, 6, 1, 2, 5, 6, 3, 4, 5, 6]
    assert NgramProposer(3, 2, 2).propose(tokens) == [1, 2, 5]
    assert NgramProposer(3, 2, 2).propose(tokens, max_drafts=1) == [1]
    assert NgramProposer(3, 2, 2).propose(tokens, max_drafts=0) == []


def test_no_match_too_short_or_only_the_suffix_itself() -> None:
    proposer = NgramProposer(4, 2, 4)
    assert proposer.propose([1, 2, 3, 4, 5]) == []
    assert proposer.propose([1, 2]) == []  # the suffix is the whole sequence
    assert proposer.propose([]) == []
    assert proposer.propose([3, 3]) == []  # a 2-gram needs an earlier occurrence ending before the last token
    assert proposer.propose([3, 3, 3]) == [3]


def test_large_ids_never_match_across_token_boundaries() -> None:
    # Packed little-endian, [256, 1] is bytes 00 01 00 00 01 00 00 00; a byte-wise search could find the pattern
    # straddling two other ids. The search only takes matches on token boundaries.
    tokens = [0x01000000, 0x00000100, 0x01000000, 7, 256, 1, 9, 256, 1]
    assert NgramProposer(2, 2, 2).propose(tokens) == reference(tokens, 2, 2, 2) == [9, 256]


@pytest.mark.parametrize("seed", range(20))
def test_matches_the_reference_rule_on_random_sequences(seed: int) -> None:
    rng = random.Random(seed)
    alphabet = [0, 1, 2, 255, 256, 65536, 16777216, 2**31 - 1, 2**32 - 1]
    for _ in range(50):
        tokens = [rng.choice(alphabet[: rng.randint(2, len(alphabet))]) for _ in range(rng.randint(0, 40))]
        lookup_min = rng.randint(1, 3)
        lookup_max = rng.randint(lookup_min, 5)
        k, limit = rng.randint(1, 6), rng.choice([None, 0, 1, 3])
        got = NgramProposer(k, lookup_min, lookup_max).propose(tokens, limit)
        assert got == reference(tokens, k, lookup_min, lookup_max, limit), (tokens, lookup_min, lookup_max, k)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="num_speculative_tokens"):
        NgramProposer(0, 1, 2)
    with pytest.raises(ValueError, match="prompt_lookup_min"):
        NgramProposer(2, 3, 2)
