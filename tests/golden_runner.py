"""Run compiled bundles on the golden prompts in this process and save what they produce.

The acceptance tests start it in a fresh process, so nothing compiled or cached in the test
process can leak into what a loaded bundle computes:

    python -m ferrumc.tests.golden_runner JOBS.json

JOBS.json lists {"bundle", "golden", "out"}; each out (.npz) receives, per golden prompt i:
  logits_{i} [P, V]    prefill logits at the golden's logit positions
  greedy_{i} [n]       greedy tokens: the golden's step count, or fewer where the bundle's
                       sequence-length limit (a sliding window not yet lowered) stops it
  teacher_{i} [P + n]  top-1 ids from one prefill of prompt + golden continuation (cut at
                       the limit): at the logit positions, then at each greedy step
  forced_{i} [n]       top-1 ids of the prompt's prefill, then of each decode step fed the
                       golden continuation (what decode alone predicts at each greedy step)
plus load_seconds (open_bundle) and first_token_seconds (open to the first prefill's logits).
A job that fails writes its traceback to out with the suffix .err instead.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from ferrumc.runtime.loader import open_bundle


def run(bundle: Path, golden: Path, out: Path) -> None:
    start = time.perf_counter()
    ex = open_bundle(bundle).executor
    loaded = time.perf_counter()
    g = np.load(golden)
    limit = ex.max_sequence_length or ex.max_context
    results: dict[str, np.ndarray] = {"load_seconds": np.float64(loaded - start)}
    for i in range(int(g["num_prompts"])):
        prompt = g[f"prompt_ids_{i}"].tolist()
        rows = g[f"logit_positions_{i}"]
        want = g[f"greedy_ids_{i}"].tolist()
        if len(prompt) > limit:
            continue
        ex.add_sequence(0)
        logits = ex.prefill([0], [prompt], last_only=False)
        if "first_token_seconds" not in results:
            results["first_token_seconds"] = np.float64(time.perf_counter() - start)
        results[f"logits_{i}"] = logits[rows]
        tokens = [int(np.argmax(logits[-1]))]
        while len(tokens) < len(want) and len(prompt) + len(tokens) <= limit:
            tokens.append(int(np.argmax(ex.decode([0], [tokens[-1]])[0])))
        results[f"greedy_{i}"] = np.asarray(tokens, np.int32)
        ex.remove_sequence(0)
        forced = (prompt + want[:-1])[:limit]
        ex.add_sequence(0)
        top1 = np.argmax(ex.prefill([0], [forced], last_only=False), axis=-1)
        ex.remove_sequence(0)
        results[f"teacher_{i}"] = np.concatenate([top1[rows], top1[len(prompt) - 1 :]])
        ex.add_sequence(0)
        forced_top1 = [int(np.argmax(ex.prefill([0], [prompt])[0]))]
        for token in want[: len(tokens) - 1]:
            forced_top1.append(int(np.argmax(ex.decode([0], [token])[0])))
        ex.remove_sequence(0)
        results[f"forced_{i}"] = np.asarray(forced_top1, np.int32)
    np.savez(out, **results)


def main(argv: list[str]) -> None:
    for job in json.loads(Path(argv[0]).read_text()):
        out = Path(job["out"])
        try:
            run(Path(job["bundle"]), Path(job["golden"]), out)
        except Exception:  # one bundle's failure is its own test's, not every test's
            out.with_suffix(".err").write_text(traceback.format_exc())


if __name__ == "__main__":
    main(sys.argv[1:])
