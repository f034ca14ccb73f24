"""`ferrumc bench`: prefill and decode throughput, time from load to first token, and peak RSS.

All figures go through the engine (scheduling, sampling and detokenization included), greedy,
with EOS ignored so every request runs its full length. Prompts are fixed pseudo-random token
ids, so runs are comparable. Order of the runs:
  1. open the model, one N-token request for 1 token: load_to_first_token_s (cold start);
  2. another N-token prompt for 1 token: prefill_tok_s (warm);
  3. one request, N-token prompt, then decode_tokens tokens: decode_tok_s_batch1;
  4. `batch` such requests at once: decode_tok_s_batch (all sequences' tokens per second).
Decode rates count only steps after every sequence of the run has its first token.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from .engine import Engine
from .launch import Launched
from .types import Request, SamplingParams


@dataclass(frozen=True)
class BenchOptions:
    prompt_tokens: int = 128
    decode_tokens: int = 32
    batch: int = 4
    prefill_chunk_size: int = 512
    seed: int = 0

    def cache_tokens(self) -> int:
        """A KV cache that holds every run's sequences at once (and at least 4096 tokens)."""
        return max(4096, max(self.batch, 1) * (self.prompt_tokens + self.decode_tokens + 16))


@dataclass
class BenchResult:
    model: str
    executor: str
    load_seconds: float
    load_to_first_token_s: float
    prompt_tokens: int
    prefill_tok_s: float
    decode_tokens: int
    decode_tok_s_batch1: float
    batch: int
    decode_tok_s_batch: float
    peak_rss_mib: float

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    def to_text(self) -> str:
        return "\n".join(
            [
                f"model:                 {self.model} ({self.executor})",
                f"load:                  {self.load_seconds:.2f} s",
                f"load to first token:   {self.load_to_first_token_s:.2f} s",
                f"prefill:               {self.prefill_tok_s:.1f} tok/s ({self.prompt_tokens}-token prompt)",
                f"decode, batch 1:       {self.decode_tok_s_batch1:.1f} tok/s ({self.decode_tokens} tokens)",
                f"decode, batch {self.batch}:{' ' * (7 - len(str(self.batch)))} {self.decode_tok_s_batch:.1f} tok/s "
                f"({self.decode_tokens} tokens each)",
                f"peak RSS:              {self.peak_rss_mib:.0f} MiB",
            ]
        )


def run_bench(open_model: Callable[[], Launched], options: BenchOptions) -> BenchResult:
    """Open the model (timed from here) and measure; see the module docstring for the runs."""
    start = time.perf_counter()
    model = open_model()
    engine = Engine(
        model.executor,
        model.tokenizer,
        max_batch_size=max(options.batch, 1),
        prefill_chunk_size=options.prefill_chunk_size,
    )
    limit = model.executor.max_context - 1
    n = min(options.prompt_tokens, limit)
    prompts = _prompts(model.executor.vocab_size, n, options.batch + 2, options.seed)
    _run(engine, [prompts[0]], 1)
    first_token = time.perf_counter() - start
    prefill_s, _ = _run(engine, [prompts[1]], 1)
    decode_tokens = max(1, min(options.decode_tokens, model.executor.max_context - n))
    _, decode1_s = _run(engine, [prompts[2]], decode_tokens)
    _, decode_batch_s = _run(engine, prompts[2 : 2 + options.batch], decode_tokens)
    steps = decode_tokens - 1  # tokens after the first, per sequence
    return BenchResult(
        model=model.name,
        executor=model.kind,
        load_seconds=model.load_seconds,
        load_to_first_token_s=first_token,
        prompt_tokens=n,
        prefill_tok_s=n / prefill_s,
        decode_tokens=decode_tokens,
        decode_tok_s_batch1=steps / decode1_s if steps else float("nan"),
        batch=options.batch,
        decode_tok_s_batch=steps * options.batch / decode_batch_s if steps else float("nan"),
        peak_rss_mib=peak_rss_mib(),
    )


def _prompts(vocab: int, length: int, count: int, seed: int) -> list[tuple[int, ...]]:
    rng = np.random.default_rng(seed)
    return [tuple(int(t) for t in rng.integers(0, vocab, length)) for _ in range(count)]


_ids = iter(range(sys.maxsize))


def _run(engine: Engine, prompts: list[tuple[int, ...]], max_tokens: int) -> tuple[float, float]:
    """Run prompts to max_tokens each; seconds until all have a first token, and after that."""
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    for prompt in prompts:
        engine.add_request(Request(f"bench-{next(_ids)}", prompt, params))
    start = time.perf_counter()
    waiting_first = len(prompts)
    first_done = None
    while engine.has_unfinished():
        for out in engine.step():
            if out.token_ids and out.completion_tokens == len(out.token_ids):
                waiting_first -= 1
        if waiting_first == 0 and first_done is None:
            first_done = time.perf_counter()
    end = time.perf_counter()
    first_done = first_done or end
    return first_done - start, end - first_done


def peak_rss_mib() -> float:
    """The process's peak resident set size (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024
