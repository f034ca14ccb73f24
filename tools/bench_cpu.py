"""CPU benchmark: ferrumc beside llama.cpp's llama-bench on the same F16 GGUF files, in one run.

    python tools/bench_cpu.py [--reps 3] [--threads 2,1] [--write docs/benchmarks.md]

For each model (SmolLM2-135M, and a random-weight Qwen2.5-0.5B-shaped model; tools/bench_models.py
writes both as F16 GGUF) and ferrumc dtype: compile a bundle once (cached), then per repetition
run `ferrumc bench` (prefill of a 128-token prompt, decode at batch 1 and 4, load to first token,
peak RSS; a child process each) and `llama-bench -p 128 -n 64` alternately, at each thread count.
Medians over repetitions; the load average beside every run, since the machine is shared. A
STREAM-like read benchmark (C, AVX-512, OpenMP) gives the memory roofline for decode: bytes of
weights read per token / read bandwidth.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_models import BENCH_DIR, LLAMA_CPP, ensure_models

PROMPT, DECODE, BATCH = 128, 64, 4
READ_BW_SOURCE = r"""
// Read bandwidth: each OpenMP thread sums its share of a large float array with AVX-512.
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static double now(void) {
    struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec;
}
int main(int argc, char **argv) {
    size_t bytes = (size_t)atol(argv[1]) << 20, n = bytes / sizeof(float);
    int reps = atoi(argv[2]);
    float *a = aligned_alloc(64, bytes);
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) a[i] = 1.0f;
    volatile float sink = 0;
    for (int r = 0; r < reps; r++) {
        double t0 = now();
        float total = 0;
        #pragma omp parallel reduction(+:total)
        {
            __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
            #pragma omp for schedule(static)
            for (size_t i = 0; i < n; i += 64) {
                s0 = _mm512_add_ps(s0, _mm512_load_ps(a + i));
                s1 = _mm512_add_ps(s1, _mm512_load_ps(a + i + 16));
                s2 = _mm512_add_ps(s2, _mm512_load_ps(a + i + 32));
                s3 = _mm512_add_ps(s3, _mm512_load_ps(a + i + 48));
            }
            total += _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
        }
        sink = total;
        printf("%.3f\n", bytes / (now() - t0) / 1e9);
    }
    return 0;
}
"""


@dataclass(frozen=True)
class Case:
    """One ferrumc bundle to measure: a benchmark model compiled for one dtype."""

    model: str  # key of bench_models.ensure_models
    dtype: str

    @property
    def name(self) -> str:
        return f"{self.model}-{self.dtype}"


@dataclass
class Runs:
    """Every repetition's figures for one (case or llama.cpp model, threads)."""

    values: dict[str, list[float]] = field(default_factory=dict)
    loads: list[float] = field(default_factory=list)

    def add(self, figures: dict[str, float], load: float) -> None:
        for key, value in figures.items():
            self.values.setdefault(key, []).append(value)
        self.loads.append(load)

    def median(self, key: str) -> float:
        got = self.values.get(key)
        return statistics.median(got) if got else float("nan")


def load_average() -> float:
    return os.getloadavg()[0]


def run_child(cmd: list[str], env: dict[str, str] | None = None) -> tuple[str, float]:
    """Run `cmd`; its stdout and its own peak RSS in MiB (wait4's, not all children's max)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env={**os.environ, **(env or {})})
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode:
            tail = err.read().decode(errors="replace")[-2000:]
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{tail}")
        return out.read().decode(), usage.ru_maxrss / 1024


def read_bandwidth(cache: Path, threads: int, mib: int = 1024, reps: int = 5) -> float:
    """Best read bandwidth (GB/s) over `reps` passes on `threads` threads."""
    exe = cache / "readbw"
    if not exe.exists():
        src = cache / "readbw.c"
        src.write_text(READ_BW_SOURCE)
        cmd = ["gcc", "-O2", "-march=native", "-fopenmp", str(src), "-o", str(exe)]
        subprocess.run(cmd, check=True)
    out = subprocess.run(
        [str(exe), str(mib), str(reps)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": str(threads)},
    ).stdout
    return max(float(line) for line in out.split())


def compile_bundle(case: Case, gguf: Path, cache: Path) -> dict[str, object]:
    """Compile once into the cache; returns wall seconds, manifest phase timings and bundle MB."""
    bundle = cache / f"{case.name}.ferrum"
    record = cache / f"{case.name}.compile.json"
    if not bundle.exists() or not record.exists():
        if bundle.exists():
            shutil.rmtree(bundle)
        cmd = [sys.executable, "-m", "ferrumc", "compile", str(gguf), "--dtype", case.dtype]
        start = time.perf_counter()
        run_child([*cmd, "-o", str(bundle)])
        wall = time.perf_counter() - start
        manifest = json.loads((bundle / "manifest.json").read_text())
        record.write_text(
            json.dumps(
                {"wall_s": wall, "phases": manifest.get("timings", {}), "load": load_average()}
            )
        )
    info = json.loads(record.read_text())
    files = [p for p in bundle.rglob("*") if p.is_file()]
    info["bundle_mb"] = sum(p.stat().st_size for p in files) / 1e6
    info["bundle"] = str(bundle)
    info["decode_bytes"] = decode_bytes(json.loads((bundle / "manifest.json").read_text()))
    return info


def decode_bytes(manifest: dict) -> int:
    """Weight bytes one decode step reads: all of them, except an untied embedding table, of
    which only one row per token is read."""
    params = manifest["params"]
    total = sum(p["nbytes"] for p in params)
    tied = not any(p["name"].startswith("lm_head") for p in params)
    embed = sum(p["nbytes"] for p in params if p["name"].startswith("embed."))
    return total if tied else total - embed


def ferrumc_bench(bundle: str, threads: int) -> dict[str, float]:
    cmd = [sys.executable, "-m", "ferrumc", "bench", bundle, "--json"]
    cmd += ["--prompt-tokens", str(PROMPT), "--decode-tokens", str(DECODE), "--batch", str(BATCH)]
    out, rss = run_child(cmd, {"TVM_NUM_THREADS": str(threads)})
    r = json.loads(out[out.index("{") :])
    return {
        "prefill": r["prefill_tok_s"],
        "decode1": r["decode_tok_s_batch1"],
        "decode4": r["decode_tok_s_batch"],
        "first_token_s": r["load_to_first_token_s"],
        "rss_mib": r["peak_rss_mib"],
        "child_rss_mib": rss,
    }


def llama_bench(llama_bin: Path, gguf: Path, threads: int, reps: int) -> dict[str, float]:
    cmd = [str(llama_bin / "llama-bench"), "-m", str(gguf), "-p", str(PROMPT), "-n", str(DECODE)]
    cmd += ["-t", str(threads), "-r", str(reps), "-o", "json"]
    out, rss = run_child(cmd)
    figures = {"rss_mib": rss}
    for test in json.loads(out):
        key = "prefill" if test["n_prompt"] and not test["n_gen"] else "decode1"
        figures[key] = test["avg_ts"]
    return figures


def machine() -> dict[str, str]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    date = subprocess.run(["date"], capture_output=True, text=True).stdout.strip()
    return {
        "date": date,
        "cpu": cpu,
        "cores": str(len(os.sched_getaffinity(0))),
        "kernel": platform.release(),
    }


def fmt(x: float, digits: int = 1) -> str:
    return "-" if x != x else f"{x:.{digits}f}"  # NaN as a dash


def report(args, info, cases, compiled, ours, theirs, bandwidth, loads) -> str:
    """The markdown page: command, machine, then one table per thread count and the compiles."""
    lines = [
        "# CPU benchmarks: ferrumc and llama.cpp",
        "",
        "Measured by `tools/bench_cpu.py` on the project's shared 2-core machine; the models are",
        "F16 weights (`tools/bench_models.py`): SmolLM2-135M-Instruct (its Q4_1 release",
        "requantized to F16 by llama-quantize; both engines read that GGUF) and random weights",
        "(seed 0) in Qwen2.5-0.5B's shape (llama.cpp reads a GGUF, ferrumc compiles a Hugging Face",
        "checkpoint holding the same values). ferrumc's f32 rows compute on the same values",
        "widened to f32 (twice the bytes).",
        "",
        "Command:",
        "",
        f"    python tools/bench_cpu.py {' '.join(args.argv)}".rstrip(),
        "",
        f"- date: {info['date']}",
        f"- CPU: {info['cpu']}, {info['cores']} cores visible, Linux {info['kernel']}",
        f"- load average (1 min) at start / end: {loads[0]:.2f} / {loads[-1]:.2f}; "
        f"during runs: median {statistics.median(loads):.2f}, max {max(loads):.2f}",
        "- read bandwidth (STREAM-like, 1 GiB, best of 5): "
        + ", ".join(f"{t} thread{'s' * (t > 1)} {bandwidth[t]:.1f} GB/s" for t in args.threads),
        f"- {args.reps} repetitions, ferrumc and llama-bench alternating; medians. llama-bench: "
        f"`-p {PROMPT} -n {DECODE} -r {args.llama_reps}`. ferrumc: `ferrumc bench BUNDLE "
        f"--prompt-tokens {PROMPT} --decode-tokens {DECODE} --batch {BATCH}` (through the engine).",
        "",
    ]
    for t in args.threads:
        lines += [
            f"## {t} thread{'s' * (t > 1)}",
            "",
            "| model | engine | prefill 128 tok/s | decode b1 tok/s | decode b4 tok/s (total) "
            "| load to 1st token s | peak RSS MiB | decode roofline tok/s (% reached) "
            "| ratio vs llama.cpp F16: prefill / decode |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for case in cases:
            r, c = ours[(case.name, t)], compiled[case.name]
            roof = bandwidth[t] * 1e9 / c["decode_bytes"]
            d1 = r.median("decode1")
            ref = theirs.get((case.model, t))
            ratio = "-"
            if ref is not None and case.dtype == "f16":
                ratio = (
                    f"{r.median('prefill') / ref.median('prefill'):.2f}x / "
                    f"{d1 / ref.median('decode1'):.2f}x"
                )
            lines.append(
                f"| {case.model} | ferrumc {case.dtype} | {fmt(r.median('prefill'))} | {fmt(d1)} "
                f"| {fmt(r.median('decode4'))} | {fmt(r.median('first_token_s'), 2)} "
                f"| {fmt(r.median('rss_mib'), 0)} | {roof:.1f} ({100 * d1 / roof:.0f}%) | {ratio} |"
            )
        for model in dict.fromkeys(c.model for c in cases):
            ref = theirs.get((model, t))
            if ref is None:
                continue
            f16 = next((c for c in cases if c.model == model and c.dtype == "f16"), None)
            roof = (
                f"{bandwidth[t] * 1e9 / compiled[f16.name]['decode_bytes']:.1f} "
                f"({100 * ref.median('decode1') * compiled[f16.name]['decode_bytes'] / (bandwidth[t] * 1e9):.0f}%)"
                if f16
                else "-"
            )
            lines.append(
                f"| {model} | llama.cpp F16 | {fmt(ref.median('prefill'))} "
                f"| {fmt(ref.median('decode1'))} | - | - | {fmt(ref.median('rss_mib'), 0)} "
                f"| {roof} | 1 |"
            )
        lines.append("")
    lines += [
        "## Compiles",
        "",
        "| bundle | compile s (wall, whole `ferrumc compile`) | of which lower + TVM build s "
        "| bundle MB | weight bytes read per decode token (MB) |",
        "|---|---|---|---|---|",
    ]
    for case in cases:
        c = compiled[case.name]
        phases = c.get("phases", {})
        codegen = phases.get("lower", 0.0) + phases.get("build", 0.0)
        lines.append(
            f"| {case.name} | {c['wall_s']:.1f} | {codegen:.1f} | {c['bundle_mb']:.0f} "
            f"| {c['decode_bytes'] / 1e6:.0f} |"
        )
    lines += ["", "Compile phases (seconds):", ""]
    for case in cases:
        phases = compiled[case.name].get("phases", {})
        lines.append(f"- {case.name}: " + ", ".join(f"{k} {v:.1f}" for k, v in phases.items()))
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--llama-reps", type=int, default=3, help="llama-bench -r per run")
    parser.add_argument("--threads", default="2,1", help="thread counts, comma-separated")
    parser.add_argument(
        "--cases",
        default="smollm2:f32,smollm2:f16,qwen05b:f16,qwen05b:f32",
        help="model:dtype pairs (models: smollm2, qwen05b)",
    )
    parser.add_argument("--cache", type=Path, default=BENCH_DIR)
    parser.add_argument("--llama-bin", type=Path, default=LLAMA_CPP)
    parser.add_argument("--write", type=Path, help="write the markdown report here")
    args = parser.parse_args()
    args.argv = sys.argv[1:]
    args.threads = [int(t) for t in args.threads.split(",")]
    cases = [Case(*pair.split(":")) for pair in args.cases.split(",")]
    loads = [load_average()]
    info = machine()

    models = ensure_models(args.cache, args.llama_bin)
    compiled = {}
    for case in cases:
        print(f"compile {case.name} ...", flush=True)
        # ferrumc compiles from the Hugging Face copy where there is one (same values).
        source = models.get(f"{case.model}-hf", models[case.model])
        compiled[case.name] = compile_bundle(case, source, args.cache)
        print(f"  {compiled[case.name]['wall_s']:.1f} s, {compiled[case.name]['bundle_mb']:.0f} MB")
    bandwidth = {t: read_bandwidth(args.cache, t) for t in args.threads}
    print(f"read bandwidth: {bandwidth}", flush=True)

    ours: dict[tuple[str, int], Runs] = {}
    theirs: dict[tuple[str, int], Runs] = {}
    have_llama = (args.llama_bin / "llama-bench").exists()
    for rep in range(args.reps):
        for t in args.threads:
            for model in dict.fromkeys(c.model for c in cases):
                if have_llama:
                    load = load_average()
                    got = llama_bench(args.llama_bin, models[model], t, args.llama_reps)
                    theirs.setdefault((model, t), Runs()).add(got, load)
                    loads.append(load)
                    print(f"rep {rep} t{t} llama.cpp {model}: {got} (load {load:.2f})", flush=True)
                for case in (c for c in cases if c.model == model):
                    load = load_average()
                    got = ferrumc_bench(compiled[case.name]["bundle"], t)
                    ours.setdefault((case.name, t), Runs()).add(got, load)
                    loads.append(load)
                    print(
                        f"rep {rep} t{t} ferrumc {case.name}: {got} (load {load:.2f})", flush=True
                    )
    loads.append(load_average())
    text = report(args, info, cases, compiled, ours, theirs, bandwidth, loads)
    print(text)
    if args.write:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(text)


if __name__ == "__main__":
    main()
