"""Decode step time of two or more bundles of one model, measured side by side in one process.

    python tools/ab_decode.py A.ferrum B.ferrum [--rounds 40] [--segment 8] [--threads 2]

This machine's speed drifts by 10-20% over minutes (shared cores), which swamps a change of a
few percent measured in two runs one after the other. Here each bundle prefills the same
pseudo-random prompt, then the bundles take turns: `--segment` decode steps of A, then of B,
and so on for `--rounds` turns, so that drift hits all of them alike. Printed per bundle: the
10th percentile and the median of its per-segment step times, and each one's ratio to the
first bundle's.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from ferrumc.runtime.launch import LaunchOptions, launch


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("bundles", nargs="+")
    p.add_argument("--prompt", type=int, default=128, help="prompt tokens")
    p.add_argument("--rounds", type=int, default=40, help="turns per bundle")
    p.add_argument("--segment", type=int, default=8, help="decode steps per turn")
    p.add_argument("--span", type=int, default=64, help="steps decoded before the prompt restarts")
    p.add_argument("--threads", type=int, default=None, help="TVM worker threads")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if len(args.bundles) < 2:
        raise SystemExit("ab_decode: give two or more bundles to compare")
    executors = [launch(b, LaunchOptions(threads=args.threads)).executor for b in args.bundles]
    vocab = min(ex.vocab_size for ex in executors)
    prompt = np.random.default_rng(0).integers(0, vocab, args.prompt).tolist()
    # Each bundle decodes one sequence, restarted from the prompt (untimed) every `--span`
    # steps, so that all of them attend over the same range of context lengths.
    length = [0] * len(executors)

    def segment(i: int) -> float:
        ex = executors[i]
        if length[i] == 0 or length[i] + args.segment > len(prompt) + args.span:
            if length[i]:
                ex.remove_sequence(0)
            ex.add_sequence(0)
            ex.prefill([0], [prompt])
            length[i] = len(prompt)
        start = time.perf_counter()
        for _ in range(args.segment):
            ex.decode([0], [1])
        length[i] += args.segment
        return (time.perf_counter() - start) / args.segment

    for i in range(len(executors)):  # warm-up: thread pool, page faults
        segment(i)
    times: list[list[float]] = [[] for _ in executors]
    for _ in range(args.rounds):
        for i in range(len(executors)):
            times[i].append(segment(i))
    base_p10, base_p50 = np.percentile(times[0], [10, 50])
    print(f"{args.rounds} turns of {args.segment} decode steps, threads {args.threads}")
    print(f"{'bundle':50} {'p10 us':>8} {'p50 us':>8} {'p10 ratio':>9} {'p50 ratio':>9}")
    for bundle, t in zip(args.bundles, times, strict=True):
        p10, p50 = np.percentile(t, [10, 50])
        print(
            f"{bundle[-50:]:50} {p10 * 1e6:8.0f} {p50 * 1e6:8.0f} "
            f"{p10 / base_p10:9.3f} {p50 / base_p50:9.3f}"
        )


if __name__ == "__main__":
    main()
