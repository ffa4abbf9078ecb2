"""SamplingParams validation: every invalid field raises ValueError naming that field; valid values pass."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pagedserve.sampling_params import SamplingParams

INT64_MAX = 2**63 - 1
not_numbers = st.one_of(st.text(max_size=3), st.none(), st.booleans(), st.lists(st.integers(), max_size=2))
non_finite = st.sampled_from([math.nan, math.inf, -math.inf])


def floats_outside(low: float, high: float, low_open: bool = False, high_open: bool = False) -> Any:
    below = st.floats(max_value=low, exclude_max=not low_open, allow_nan=False, allow_infinity=False)
    above = st.floats(min_value=high, exclude_min=not high_open, allow_nan=False, allow_infinity=False)
    return st.one_of(below, above, non_finite, not_numbers)


# field -> values that must be refused
INVALID: dict[str, Any] = {
    "n": st.one_of(st.integers(max_value=0), st.floats(allow_nan=False), not_numbers),
    "temperature": st.one_of(st.floats(max_value=0, exclude_max=True), non_finite, not_numbers),
    "top_p": floats_outside(0.0, 1.0, low_open=True),
    "top_k": st.one_of(st.integers(max_value=-2), st.floats(allow_nan=False), not_numbers),
    "min_p": floats_outside(0.0, 1.0),
    "presence_penalty": floats_outside(-2.0, 2.0),
    "frequency_penalty": floats_outside(-2.0, 2.0),
    "repetition_penalty": st.one_of(st.floats(max_value=0.0), non_finite, not_numbers),
    "seed": st.one_of(
        st.integers(min_value=INT64_MAX + 1),
        st.integers(max_value=-INT64_MAX - 1),
        st.floats(),
        st.text(max_size=2),
    ),
    "max_tokens": st.one_of(st.integers(max_value=0), st.floats(allow_nan=False), st.text(max_size=2)),
    "min_tokens": st.one_of(st.integers(max_value=-1), st.floats(allow_nan=False), not_numbers),
    "logprobs": st.one_of(st.integers(max_value=-1), st.floats()),
    "prompt_logprobs": st.one_of(st.integers(max_value=-1), st.floats()),
    "stop": st.one_of(
        st.just(""), st.lists(st.one_of(st.just(""), st.integers(), st.none()), min_size=1, max_size=3)
    ),
    "stop_token_ids": st.lists(
        st.one_of(st.integers(max_value=-1), st.floats(), st.text(max_size=2)), min_size=1
    ),
}


@pytest.mark.parametrize("name", sorted(INVALID))
def test_each_invalid_field_raises_value_error_naming_it(name: str) -> None:
    @settings(max_examples=40, deadline=None)
    @given(value=INVALID[name])
    def check(value: Any) -> None:
        with pytest.raises(ValueError) as error:
            SamplingParams(**{name: value})
        assert str(error.value).startswith(name), (name, value, str(error.value))
        assert getattr(error.value, "param", None) == name

    check()


def test_min_tokens_above_max_tokens_names_min_tokens() -> None:
    with pytest.raises(ValueError, match="^min_tokens") as error:
        SamplingParams(max_tokens=3, min_tokens=4)
    assert getattr(error.value, "param", None) == "min_tokens"


@settings(max_examples=150, deadline=None)
@given(
    temperature=st.floats(min_value=0, max_value=5),
    top_p=st.floats(min_value=0, max_value=1, exclude_min=True),
    top_k=st.one_of(st.just(-1), st.integers(min_value=0, max_value=10**6)),
    min_p=st.floats(min_value=0, max_value=1),
    presence_penalty=st.floats(min_value=-2, max_value=2),
    frequency_penalty=st.floats(min_value=-2, max_value=2),
    repetition_penalty=st.floats(min_value=1e-3, max_value=10),
    seed=st.one_of(st.none(), st.integers(min_value=-INT64_MAX, max_value=INT64_MAX)),
    max_tokens=st.one_of(st.none(), st.integers(min_value=1, max_value=10**6)),
    logprobs=st.one_of(st.none(), st.integers(min_value=0, max_value=1000)),
    stop=st.one_of(
        st.none(), st.text(min_size=1, max_size=4), st.lists(st.text(min_size=1, max_size=4), max_size=3)
    ),
    stop_token_ids=st.one_of(st.none(), st.lists(st.integers(min_value=0, max_value=10**6), max_size=3)),
)
def test_valid_values_are_accepted_and_normalised(**fields: Any) -> None:
    params = SamplingParams(**fields)
    assert isinstance(params.stop, list) and all(isinstance(s, str) for s in params.stop)
    assert params.all_stop_token_ids == set(params.stop_token_ids or [])
    assert params.greedy == (params.temperature < 1e-5)


@pytest.mark.parametrize("fields", [{"stop": 5}, {"stop_token_ids": 5}])
def test_non_list_stop_fields_raise_value_error(fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(fields))):
        SamplingParams(**fields)
