"""Microbenchmark of the int4 decode GEMV (codegen/int4_cpu.py) beside the f16 one (linear_cpu.py).

    python tools/bench_int4_kernel.py [--group-size 32] [--threads 1,2] [--rows 1]

For the decode shapes (N x K) of SmolLM2-135M and Qwen2.5-0.5B, the kernels are built once
(x f16, symmetric int4 with f16 scales), then timed in a child process per thread count
(TVM_NUM_THREADS is read once per process). Weights are read from memory, not cache: each
call takes the next of several copies whose total exceeds the L3 cache, so every call streams
its weights from DRAM as in a real decode step. Kernels: int4 (f32 math), int4 with x
quantized to int8 (VNNI; where K % 128 == 0), f16. Reported: GB/s of weight bytes streamed
(int4: packed nibbles + scales; f16: the matrix) and its share of the machine's read bandwidth
(tools/bench_cpu.py's readbw8, same thread count), microseconds per call (Python call overhead
of ~2-4 us included, which weighs on the smallest shapes).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

SHAPES = {
    "smollm2": [(576, 576), (1536, 576), (576, 1536), (49152, 576)],
    "qwen2.5-0.5b": [(896, 896), (1152, 896), (9728, 896), (896, 4864), (151936, 896)],
}
POOL_BYTES = 320 << 20  # more than the 105 MiB L3 of the benchmark machine, thrice over
MIN_SECONDS = 0.3


def build_kernels(out: Path, group: int, rows: int) -> list[dict[str, object]]:
    """Build and export both kernels for every shape; returns the plan the children time."""
    import tvm

    from ferrumc.codegen.int4_cpu import Int4Spec, int4_kernel, int4_tiling
    from ferrumc.codegen.int4_int8x_cpu import supports
    from ferrumc.codegen.linear_cpu import LinearSpec, linear_kernel, tiling
    from ferrumc.codegen.targets import TARGETS

    target = TARGETS["llvm"]
    plan = []
    for model, shapes in SHAPES.items():
        for n, k in shapes:
            if k % group:
                continue  # e.g. SmolLM2's K = 576 with groups of 128
            ispec = Int4Spec(n, k, group, "float16", "float16")
            fspec = LinearSpec(n, k, "float16", "float16", "float16")
            kernels = {
                "int4": int4_kernel(ispec, int4_tiling(ispec, target.vector_bits)),
                "f16": linear_kernel(fspec, tiling(fspec, target.vector_bits)),
            }
            if supports(ispec) and "avx512_vnni" in target.features:
                int8x = int4_tiling(ispec, target.vector_bits, int8_activations=True)
                kernels["int4_int8x"] = int4_kernel(ispec, int8x)
            for kind, func in kernels.items():
                path = out / f"{kind}_{n}_{k}.so"
                lib = tvm.tirx.build(func.with_attr("global_symbol", "kernel"), target.tvm_target())
                lib.export_library(str(path))
                plan.append({"model": model, "n": n, "k": k, "kind": kind, "lib": str(path)})
    return [{**p, "group": group, "rows": rows} for p in plan]


def time_kernel(entry: dict[str, object]) -> dict[str, object]:
    """Seconds per call with weights cycled through copies that do not fit in the caches."""
    import tvm

    n, k, group, rows = int(entry["n"]), int(entry["k"]), int(entry["group"]), int(entry["rows"])
    rng = np.random.default_rng(0)
    cpu = tvm.cpu()
    if entry["kind"] != "f16":
        weights = [
            rng.integers(0, 256, (n, k // 2), dtype=np.uint8),
            (rng.uniform(0.5, 1, (n, k // group)) / 16).astype(np.float16),
        ]
    else:
        weights = [(rng.standard_normal((n, k)) / 16).astype(np.float16)]
    nbytes = sum(w.nbytes for w in weights)
    copies = max(2, -(-POOL_BYTES // nbytes))
    pool = [[tvm.runtime.tensor(w, cpu) for w in weights] for _ in range(copies)]
    x = tvm.runtime.tensor(rng.standard_normal((rows, k)).astype(np.float16), cpu)
    y = tvm.runtime.tensor(np.zeros((rows, n), np.float16), cpu)
    f = tvm.runtime.load_module(str(entry["lib"]))["kernel"]
    for ws in pool:  # warm-up: page in every copy, start the thread pool
        f(x, *ws, y)
    samples = []
    for _ in range(3):
        calls, start = 0, time.perf_counter()
        while time.perf_counter() - start < MIN_SECONDS:
            for ws in pool:
                f(x, *ws, y)
            calls += copies
        samples.append((time.perf_counter() - start) / calls)
    seconds = statistics.median(samples)
    return {**entry, "bytes": nbytes, "us": seconds * 1e6, "gbs": nbytes / seconds / 1e9}


def child(plan_path: Path) -> None:
    plan = json.loads(plan_path.read_text())
    for entry in plan:
        print(json.dumps(time_kernel(entry)), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group-size", type=int, default=32, choices=(32, 64, 128))
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rows", type=int, default=1, help="rows of x (decode batch)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    from bench_cpu import read_bandwidth
    from bench_models import BENCH_DIR

    with tempfile.TemporaryDirectory() as tmp:
        plan = build_kernels(Path(tmp), args.group_size, args.rows)
        plan_path = Path(tmp) / "plan.json"
        plan_path.write_text(json.dumps(plan))
        print(f"int4 group {args.group_size} symmetric, f16 x and scales, M = {args.rows}")
        print(
            "| model | N x K | threads | read GB/s | int4 us | int4 GB/s | % read bw "
            "| int4, int8 x: us | GB/s | % read bw | f16 us | f16 GB/s | % read bw |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for threads in (int(t) for t in args.threads.split(",")):
            bw = read_bandwidth(BENCH_DIR, threads)
            print(f"threads {threads}: load average {os.getloadavg()[0]:.1f} before timing")
            env = {**os.environ, "TVM_NUM_THREADS": str(threads)}
            cmd = [sys.executable, __file__, "--child", str(plan_path)]
            out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
            rows = [json.loads(line) for line in out.stdout.splitlines()]
            by_shape = {(r["n"], r["k"], r["kind"]): r for r in rows}
            for model, shapes in SHAPES.items():
                for n, k in shapes:
                    if (n, k, "int4") not in by_shape:
                        continue
                    cells = [model, f"{n} x {k}", str(threads), f"{bw:.1f}"]
                    for kind in ("int4", "int4_int8x", "f16"):
                        r = by_shape.get((n, k, kind))
                        cells += (
                            [f"{r['us']:.1f}", f"{r['gbs']:.1f}", f"{100 * r['gbs'] / bw:.0f}%"]
                            if r
                            else ["-", "-", "-"]
                        )
                    print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
