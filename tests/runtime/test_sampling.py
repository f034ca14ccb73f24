"""Each sampling function against hand-computed distributions; seeded draws; greedy."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ferrumc.errors import RequestError
from ferrumc.runtime import sampling
from ferrumc.runtime.types import SamplingParams

# softmax of these is exactly [0.1, 0.2, 0.3, 0.4]
LOGITS = np.log(np.array([0.1, 0.2, 0.3, 0.4], np.float32))


def probs_of(logits: np.ndarray) -> np.ndarray:
    return sampling.softmax(logits)


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits_seen_anywhere():
    logits = np.array([2.0, -2.0, 2.0, -2.0, 1.0], np.float32)
    out = sampling.apply_penalties(logits, [0], [1, 1], repetition=2.0)
    np.testing.assert_allclose(out, [1.0, -4.0, 2.0, -2.0, 1.0])
    assert logits[0] == 2.0, "the input is not modified"


def test_presence_and_frequency_penalties_count_generated_tokens_only():
    logits = np.zeros(4, np.float32)
    out = sampling.apply_penalties(logits, [3, 3], [0, 0, 0, 1], presence=0.5, frequency=0.25)
    # token 0: 0.5 + 3 * 0.25; token 1: 0.5 + 0.25; token 3 was only in the prompt
    np.testing.assert_allclose(out, [-1.25, -0.75, 0.0, 0.0])


def test_temperature_scales_logits():
    p = probs_of(sampling.apply_temperature(LOGITS, 0.5))
    np.testing.assert_allclose(p, np.array([1, 4, 9, 16]) / 30, rtol=1e-5)


def test_top_k_keeps_the_k_most_likely():
    p = probs_of(sampling.top_k_filter(LOGITS, 2))
    np.testing.assert_allclose(p, [0, 0, 3 / 7, 4 / 7], rtol=1e-5)
    assert sampling.top_k_filter(LOGITS, 0) is LOGITS


def test_top_p_keeps_the_smallest_set_reaching_p():
    np.testing.assert_allclose(
        probs_of(sampling.top_p_filter(LOGITS, 0.5)), [0, 0, 3 / 7, 4 / 7], rtol=1e-5
    )
    np.testing.assert_allclose(
        probs_of(sampling.top_p_filter(LOGITS, 0.8)), [0, 2 / 9, 3 / 9, 4 / 9], rtol=1e-5
    )
    np.testing.assert_allclose(probs_of(sampling.top_p_filter(LOGITS, 0.01)), [0, 0, 0, 1])
    assert sampling.top_p_filter(LOGITS, 1.0) is LOGITS


def test_min_p_keeps_tokens_at_least_min_p_times_the_best():
    # 0.6 * 0.4 = 0.24: 0.3 and 0.4 stay
    np.testing.assert_allclose(
        probs_of(sampling.min_p_filter(LOGITS, 0.6)), [0, 0, 3 / 7, 4 / 7], rtol=1e-5
    )
    np.testing.assert_allclose(
        probs_of(sampling.min_p_filter(LOGITS, 0.45)), [0, 2 / 9, 3 / 9, 4 / 9], rtol=1e-5
    )


def test_processed_logits_apply_penalty_temperature_then_filters():
    params = SamplingParams(temperature=0.5, top_k=3, top_p=0.85, repetition_penalty=2.0)
    logits = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    # penalty halves token 3 to 2.0; /0.5 -> [2, 4, 6, 4]; top-k 3 drops token 0 (ties at 4 stay)
    out = sampling.processed_logits(logits, params, [3], [])
    e = np.exp(np.array([4.0, 6.0, 4.0]) - 6.0)
    want = e / e.sum()  # [0.106, 0.787, 0.106]: 0.787 + 0.106 >= 0.85, the tie broken by id
    np.testing.assert_allclose(
        probs_of(out),
        [0, want[0] / (want[0] + want[1]), want[1] / (want[0] + want[1]), 0],
        rtol=1e-5,
    )


def test_sample_draws_in_proportion_and_is_reproducible_with_a_seed():
    probs = np.array([0.1, 0.2, 0.3, 0.4])
    rng = np.random.default_rng(0)
    draws = np.array([sampling.sample(probs, rng) for _ in range(20000)])
    np.testing.assert_allclose(np.bincount(draws, minlength=4) / 20000, probs, atol=0.015)
    first = [sampling.sample(probs, np.random.default_rng(7)) for _ in range(3)]
    again = [sampling.sample(probs, np.random.default_rng(7)) for _ in range(3)]
    assert first == again


def test_sample_never_draws_a_filtered_token():
    probs = probs_of(sampling.top_k_filter(LOGITS, 1))
    rng = np.random.default_rng(1)
    assert {sampling.sample(probs, rng) for _ in range(200)} == {3}


def test_choose_at_temperature_zero_is_greedy_after_penalties():
    params = SamplingParams(temperature=0.0, presence_penalty=2.0)
    rng = np.random.default_rng(0)
    logits = np.array([0.0, 1.0, 1.5], np.float32)
    assert sampling.choose(logits, params, [], [], rng) == 2
    assert sampling.choose(logits, params, [], [2], rng) == 1  # 1.5 - 2 < 1
    state = rng.bit_generator.state
    sampling.choose(logits, params, [], [], rng)
    assert rng.bit_generator.state == state, "greedy draws nothing"


def test_choose_with_a_seed_is_deterministic():
    params = SamplingParams(temperature=1.0, top_p=0.9)
    logits = np.random.default_rng(3).standard_normal(100).astype(np.float32)

    def run() -> list[int]:
        rng = np.random.default_rng(5)
        return [sampling.choose(logits, params, [], [], rng) for _ in range(10)]

    assert run() == run()


def test_token_logprob_reports_the_raw_distribution_and_the_top_n():
    lp = sampling.token_logprob(LOGITS, 1, 2)
    assert lp.token_id == 1 and lp.logprob == pytest.approx(math.log(0.2), rel=1e-5)
    assert [t for t, _ in lp.top] == [3, 2]
    assert [v for _, v in lp.top] == pytest.approx([math.log(0.4), math.log(0.3)], rel=1e-5)
    assert sampling.token_logprob(LOGITS, 0, 0).top == ()


@pytest.mark.parametrize(
    "field, value",
    [
        ("temperature", -0.1),
        ("top_p", 0.0),
        ("top_k", -1),
        ("min_p", 1.5),
        ("repetition_penalty", 0.0),
        ("presence_penalty", 3.0),
        ("frequency_penalty", -3.0),
        ("max_tokens", 0),
        ("logprobs", 21),
        ("stop_token_ids", (99,)),
        ("stop", ("",)),
    ],
)
def test_invalid_parameters_are_named(field, value):
    with pytest.raises(RequestError, match=field) as e:
        sampling.validate(SamplingParams(**{field: value}), vocab_size=10)
    assert e.value.param == field
