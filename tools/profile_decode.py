"""Where a compiled bundle's decode step spends its time, kernel by kernel.

    python tools/profile_decode.py BUNDLE [--prompt 128] [--steps 32] [--threads 2] [--batch 1]

Prefills one pseudo-random prompt per sequence, then times `--steps` decode steps twice: bare
(the wall time per step that `ferrumc bench` sees) and with a Relax VM instrument that clocks
every call the decode function makes. The table groups calls by kernel, with calls per step
and microseconds per call; "other" is the bare step less the sum of the kernels (the VM, the
KV cache's begin/end, argument wrapping, logits to numpy). The instrument adds a few
microseconds per call, so its total exceeds the bare step. Last, the host side alone: the
same steps with the compiled decode function replaced by a stub.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import numpy as np

from ferrumc.codegen.tvm_import import tvm
from ferrumc.runtime.launch import LaunchOptions, launch


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("bundle")
    p.add_argument("--prompt", type=int, default=128, help="prompt tokens per sequence")
    p.add_argument("--steps", type=int, default=32, help="decode steps timed")
    p.add_argument("--batch", type=int, default=1, help="sequences decoded together")
    p.add_argument("--threads", type=int, default=None, help="TVM worker threads")
    p.add_argument("--top", type=int, default=30, help="kernels listed")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    model = launch(args.bundle, LaunchOptions(threads=args.threads, max_batch_size=args.batch))
    ex = model.executor
    rng = np.random.default_rng(0)
    seqs = list(range(args.batch))
    for s in seqs:
        ex.add_sequence(s)
        ex.prefill([s], [rng.integers(0, ex.vocab_size, args.prompt).tolist()])
    tokens = [1] * args.batch

    def steps() -> float:
        start = time.perf_counter()
        for _ in range(args.steps):
            ex.decode(seqs, tokens)
        return (time.perf_counter() - start) / args.steps

    steps()  # warm-up: thread pool, page faults
    bare = min(steps() for _ in range(3))

    totals: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    started: list[float] = []

    def instrument(func, symbol, before, ret, *call_args):
        if before:
            started.append(time.perf_counter())
        else:
            totals[symbol] += time.perf_counter() - started.pop()
            calls[symbol] += 1
        return 0

    vm = ex.library.vm
    vm.set_instrument(instrument)
    instrumented = steps()
    vm.set_instrument(None)

    # The host side alone: the same calls with the compiled function replaced by a stub that
    # returns logits at once (argument wrapping, the cache's begin/end, logits to numpy).
    stub_logits = tvm.runtime.tensor(np.zeros((args.batch, ex.vocab_size), np.float32))
    ex.library.vm = {"decode": lambda *_: stub_logits}
    host = min(steps() for _ in range(3))
    ex.library.vm = vm

    n = args.steps
    print(f"{args.bundle}: batch {args.batch}, {args.prompt}-token prompt, threads {args.threads}")
    print(
        f"bare step {bare * 1e6:.0f} us ({1 / bare * args.batch:.1f} tok/s); "
        f"instrumented {instrumented * 1e6:.0f} us"
    )
    rows = sorted(totals, key=totals.get, reverse=True)
    kernels = sum(totals.values()) / n
    print(f"{'kernel':48} {'calls/step':>10} {'us/call':>8} {'us/step':>8} {'share':>6}")
    for sym in rows[: args.top]:
        per_step = totals[sym] / n
        print(
            f"{sym[:48]:48} {calls[sym] / n:10.0f} {totals[sym] / calls[sym] * 1e6:8.1f} "
            f"{per_step * 1e6:8.0f} {per_step / bare:6.1%}"
        )
    rest = sum(totals[s] for s in rows[args.top :]) / n
    print(f"{'(the rest)':48} {'':10} {'':8} {rest * 1e6:8.0f} {rest / bare:6.1%}")
    print(f"{'sum of kernels':48} {sum(calls.values()) / n:10.0f} {'':8} {kernels * 1e6:8.0f}")
    print(f"{'other (bare step - kernels)':48} {'':10} {'':8} {(bare - kernels) * 1e6:8.0f}")
    print(f"host side of a step (compiled decode stubbed out): {host * 1e6:.0f} us")


if __name__ == "__main__":
    main()
