"""Greedy runs of the engine on a tiny model, shared by the interpreter and the compiled-VM tests."""

from __future__ import annotations

from ferrumc.runtime.engine import Engine, run_to_completion
from ferrumc.runtime.types import EngineStats, Executor, Request, SamplingParams

STEPS = 8
PROMPTS = [
    [1, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51],  # 13 tokens: decode crosses a page
    [1, 7],
    [1, 100, 200, 150, 90, 3, 5],
    [1, *range(60, 90)],  # 31 tokens: two pages, chunked
]


class NoText:
    """A tokenizer stand-in: no EOS, no text; these tests compare token ids."""

    eos_token_ids = ()

    def decode(self, ids, *, skip_special_tokens=True):
        return ""


def run_greedy(
    executor: Executor, prompts: list[list[int]], chunk: int = 512, batch: int = 4
) -> tuple[list[list[int]], EngineStats]:
    """STEPS greedy tokens per prompt, all submitted at once; checks every page comes back once
    the prefix cache is cleared."""
    engine = Engine(executor, NoText(), max_batch_size=batch, prefill_chunk_size=chunk)
    params = SamplingParams(temperature=0.0, max_tokens=STEPS)
    for i, p in enumerate(prompts):
        engine.add_request(Request(str(i), tuple(p), params))
    done = run_to_completion(engine)
    engine.clear_prefix_cache()
    assert executor.free_pages() == executor.num_pages
    return [done[str(i)].token_ids for i in range(len(prompts))], engine.stats()
