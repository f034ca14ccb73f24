"""Token sampling as pure functions over one row of logits; the random generator is passed in.

The order is that of Hugging Face and vLLM: penalties, temperature, then the filters top-k,
top-p and min-p (each masks tokens to -inf), softmax, draw. Temperature 0 is greedy: the argmax
of the penalized logits. Logprobs are reported from the model's own distribution (the raw
logits), as vLLM does by default, not from the filtered one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import RequestError
from .types import SamplingParams, TokenLogprob

MAX_LOGPROBS = 20  # OpenAI's limit on top_logprobs


def apply_penalties(
    logits: np.ndarray,
    prompt_ids: Sequence[int],
    output_ids: Sequence[int],
    *,
    repetition: float = 1.0,
    presence: float = 0.0,
    frequency: float = 0.0,
) -> np.ndarray:
    """Penalize tokens already seen; logits [V] -> [V] (a new array).

    repetition (Hugging Face, multiplicative) covers prompt and output: a seen token's logit is
    divided by the penalty when positive, multiplied when negative. presence and frequency
    (OpenAI, additive) cover the output only: logit -= presence * [count > 0] + frequency * count.
    """
    out = np.array(logits, dtype=np.float32)
    if repetition != 1.0:
        seen = np.unique(np.asarray([*prompt_ids, *output_ids], dtype=np.int64))
        values = out[seen]
        out[seen] = np.where(values > 0, values / repetition, values * repetition)
    if (presence or frequency) and len(output_ids):
        counts = np.bincount(np.asarray(output_ids, dtype=np.int64), minlength=out.shape[0])
        counts = counts[: out.shape[0]].astype(np.float32)
        out -= presence * (counts > 0) + frequency * counts
    return out


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    assert temperature > 0, "temperature 0 is greedy: take argmax instead"
    return logits / np.float32(temperature)


def top_k_filter(logits: np.ndarray, k: int) -> np.ndarray:
    """Keep the k largest logits (ties at the k-th value all stay); k = 0 keeps everything."""
    if k <= 0 or k >= logits.shape[0]:
        return logits
    kth = np.partition(logits, -k)[-k]
    return np.where(logits >= kth, logits, -np.inf).astype(np.float32)


def top_p_filter(logits: np.ndarray, p: float) -> np.ndarray:
    """Keep the fewest most likely tokens whose probabilities sum to at least p (at least one)."""
    if p >= 1.0:
        return logits
    probs = softmax(logits)
    ranked = _most_likely_reaching(probs, p)
    keep = min(int(np.searchsorted(np.cumsum(probs[ranked]), p)) + 1, ranked.shape[0])
    out = np.full_like(logits, -np.inf, dtype=np.float32)
    out[ranked[:keep]] = logits[ranked[:keep]]
    return out


def _most_likely_reaching(probs: np.ndarray, p: float) -> np.ndarray:
    """Token ids by falling probability (ties by id), enough of them to sum to p.

    Sorting a 150k vocabulary costs milliseconds per token; the mass is nearly always in the
    top few hundred, so partition out a growing top-k and sort only that.
    """
    k = 64
    while k < probs.shape[0]:
        top = np.argpartition(-probs, k)[:k]
        top = top[np.lexsort((top, -probs[top]))]
        if probs[top].sum() >= p:
            return top
        k *= 4
    return np.argsort(-probs, kind="stable")


def min_p_filter(logits: np.ndarray, min_p: float) -> np.ndarray:
    """Keep tokens whose probability is at least min_p times the most likely token's."""
    if min_p <= 0.0:
        return logits
    probs = softmax(logits)
    return np.where(probs >= min_p * probs.max(), logits, -np.inf).astype(np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    e = np.exp(x - x.max())
    return e / e.sum()


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    shifted = x - x.max()
    return shifted - np.log(np.exp(shifted).sum())


def greedy(logits: np.ndarray) -> int:
    return int(np.argmax(logits))


def sample(probs: np.ndarray, rng: np.random.Generator) -> int:
    """Draw one token from probs [V] (need not be normalized) with one uniform from rng."""
    cumulative = np.cumsum(probs, dtype=np.float64)
    u = rng.random() * cumulative[-1]
    return min(int(np.searchsorted(cumulative, u, side="right")), probs.shape[0] - 1)


def processed_logits(
    logits: np.ndarray,
    params: SamplingParams,
    prompt_ids: Sequence[int],
    output_ids: Sequence[int],
) -> np.ndarray:
    """The logits after penalties, temperature and the filters: what `choose` samples from."""
    x = apply_penalties(
        logits,
        prompt_ids,
        output_ids,
        repetition=params.repetition_penalty,
        presence=params.presence_penalty,
        frequency=params.frequency_penalty,
    )
    if params.temperature == 0:
        return x
    x = apply_temperature(x, params.temperature)
    x = top_k_filter(x, params.top_k)
    x = top_p_filter(x, params.top_p)
    return min_p_filter(x, params.min_p)


def choose(
    logits: np.ndarray,
    params: SamplingParams,
    prompt_ids: Sequence[int],
    output_ids: Sequence[int],
    rng: np.random.Generator,
) -> int:
    """The next token for one sequence: greedy at temperature 0, else a draw from rng."""
    x = processed_logits(logits, params, prompt_ids, output_ids)
    if params.temperature == 0:
        return greedy(x)
    return sample(softmax(x), rng)


def token_logprob(logits: np.ndarray, token_id: int, top_n: int) -> TokenLogprob:
    """The chosen token's log-probability and the top_n most likely tokens, under the raw logits."""
    lp = log_softmax(logits)
    top: tuple[tuple[int, float], ...] = ()
    if top_n > 0:
        best = np.argpartition(-lp, min(top_n, lp.shape[0]) - 1)[:top_n]
        best = best[np.lexsort((best, -lp[best]))]  # by logprob, ties by id
        top = tuple((int(i), float(lp[i])) for i in best)
    return TokenLogprob(int(token_id), float(lp[token_id]), top)


def validate(params: SamplingParams, vocab_size: int) -> None:
    """Raise RequestError naming the first parameter out of range and its valid range."""
    checks: list[tuple[str, bool, str]] = [
        ("temperature", params.temperature >= 0, ">= 0 (0 is greedy)"),
        ("top_p", 0 < params.top_p <= 1, "in (0, 1]"),
        ("top_k", params.top_k >= 0, ">= 0 (0 is off)"),
        ("min_p", 0 <= params.min_p <= 1, "in [0, 1]"),
        ("repetition_penalty", params.repetition_penalty > 0, "> 0 (1 is off)"),
        ("presence_penalty", -2 <= params.presence_penalty <= 2, "in [-2, 2]"),
        ("frequency_penalty", -2 <= params.frequency_penalty <= 2, "in [-2, 2]"),
        ("max_tokens", params.max_tokens is None or params.max_tokens >= 1, ">= 1"),
        (
            "logprobs",
            params.logprobs is None or 0 <= params.logprobs <= MAX_LOGPROBS,
            f"in [0, {MAX_LOGPROBS}]",
        ),
    ]
    for name, ok, valid in checks:
        if not ok:
            value = getattr(params, name)
            raise RequestError(
                f"{name} is {value}; it must be {valid}", code="invalid_value", param=name
            )
    bad = [t for t in params.stop_token_ids if not 0 <= t < vocab_size]
    if bad:
        raise RequestError(
            f"stop_token_ids {bad} are outside the vocabulary 0..{vocab_size - 1}",
            code="invalid_value",
            param="stop_token_ids",
        )
    if any(s == "" for s in params.stop):
        raise RequestError("stop strings must not be empty", code="invalid_value", param="stop")
