"""Time to the first token of each turn of a chat, with the engine's prefix cache and without.

    python tools/bench_prefix_cache.py MODEL [--turns 4] [--system-tokens 800] [--reps 2]
        [--threads 2] [--max-tokens 32]

A chat re-sends its whole history every turn. The conversation: a system message holding
~`--system-tokens` tokens of the shipped held-out text, then `--turns` short user messages,
each answered greedily with up to `--max-tokens` tokens (EOS ignored, so both runs see the same
history). After a one-turn warm-up, the same conversation runs with the prefix cache (8
entries, `ferrumc serve`'s default) and without (0), `--reps` times each on one executor, the
settings alternating which goes first; per turn the median time from submitting the request to
its first token is printed with the prompt and cached token counts, as a markdown table for
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import time

from ferrumc.passes.calibration import HELDOUT
from ferrumc.runtime.chat_template import ChatEncoder
from ferrumc.runtime.engine import Engine
from ferrumc.runtime.launch import Launched, LaunchOptions, launch
from ferrumc.runtime.types import Request, SamplingParams

QUESTIONS = [
    "Summarize the text above in two sentences.",
    "Which person in it matters most, and why?",
    "Give three words that describe its tone.",
    "What would you ask its author?",
    "Rewrite its first sentence more plainly.",
    "What happens next, in one sentence?",
]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("model", help="a bundle, or anything `ferrumc serve` takes")
    p.add_argument("--turns", type=int, default=4)
    p.add_argument("--system-tokens", type=int, default=800)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--reps", type=int, default=2, help="conversations per setting, alternating")
    p.add_argument("--threads", type=int, default=None, help="TVM worker threads")
    return p.parse_args()


def system_text(model: Launched, tokens: int) -> str:
    """About `tokens` tokens of the held-out text, cut at a word."""
    words = HELDOUT.read_text().split()
    text = ""
    for n in range(50, len(words), 50):
        text = " ".join(words[:n])
        if len(model.tokenizer.encode(text)) >= tokens:
            break
    return text


def conversation(model: Launched, engine: Engine, args: argparse.Namespace) -> list[dict]:
    """One chat; per turn: prompt tokens, cached tokens, seconds to the first token."""
    encoder = ChatEncoder(model.tokenizer.hf, model.tokenizer_info)
    messages = [{"role": "system", "content": system_text(model, args.system_tokens)}]
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True)
    turns = []
    for i in range(args.turns):
        messages.append({"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]})
        ids = encoder.encode(messages, add_generation_prompt=True)
        engine.add_request(Request(f"turn-{i}-{time.monotonic_ns()}", tuple(ids), params))
        start, first, reply, cached = time.perf_counter(), None, [], 0
        while engine.has_unfinished():
            for out in engine.step():
                if first is None and out.token_ids:
                    first = time.perf_counter() - start
                reply.extend(out.token_ids)
                cached = out.cached_tokens
        text = model.tokenizer.decode(reply)
        messages.append({"role": "assistant", "content": text})
        turns.append({"prompt": len(ids), "cached": cached, "ttft": first})
    engine.clear_prefix_cache()
    return turns


def main() -> None:
    args = parse_args()
    model = launch(args.model, LaunchOptions(threads=args.threads, max_batch_size=1))
    runs: dict[int, list[list[dict]]] = {8: [], 0: []}
    warm = argparse.Namespace(**{**vars(args), "turns": 1, "max_tokens": 1})
    conversation(model, Engine(model.executor, model.tokenizer, max_batch_size=1), warm)
    for rep in range(args.reps):
        for size in (8, 0) if rep % 2 == 0 else (0, 8):  # neither always goes first
            engine = Engine(
                model.executor, model.tokenizer, max_batch_size=1, prefix_cache_size=size
            )
            runs[size].append(conversation(model, engine, args))
    print(f"{args.model}: {args.turns} turns, reps {args.reps}, threads {args.threads}")
    print("| turn | prompt tokens | cached | first token, cache (s) | without (s) | speed-up |")
    print("|---|---|---|---|---|---|")
    for t in range(args.turns):
        on = statistics.median(r[t]["ttft"] for r in runs[8])
        off = statistics.median(r[t]["ttft"] for r in runs[0])
        first = runs[8][0][t]
        print(
            f"| {t + 1} | {first['prompt']} | {first['cached']} | {on:.3f} | {off:.3f} "
            f"| {off / on:.1f}x |"
        )


if __name__ == "__main__":
    main()
