"""CPU benchmark: ferrumc beside llama.cpp's llama-bench on the same F16 GGUF files, in one run.

    python tools/bench_cpu.py [--reps 3] [--threads 2,1] [--write docs/benchmarks.md]

For each model (SmolLM2-135M, and a random-weight Qwen2.5-0.5B-shaped model; tools/bench_models.py
writes both as F16 GGUF) and ferrumc dtype: compile a bundle once (cached), then per repetition
run `ferrumc bench` (prefill of a 128-token prompt, decode at batch 1 and 4, load to first token,
peak RSS; a child process each) and `llama-bench -p 128 -n 64 -d 0,128` alternately, at each
thread count. Decode is compared at equal context: llama.cpp's after 128 tokens of depth, as
ours follows the 128-token prompt (its figure from an empty cache is reported beside). Medians over repetitions; the load average beside every run, since the machine is shared. A
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
// Read bandwidth: each OpenMP thread sums its share of a large float array with AVX-512, as
// STREAMS sequential streams read side by side (one stream per thread under-reads memory:
// ~5 against ~7-8 GB/s on one core here; decode kernels read several streams too).
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#define STREAMS 8
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
            size_t chunk = n / omp_get_num_threads(), seg = chunk / STREAMS;
            const float *base = a + omp_get_thread_num() * chunk;
            __m512 s[STREAMS];
            for (int j = 0; j < STREAMS; j++) s[j] = _mm512_setzero_ps();
            for (size_t i = 0; i < seg; i += 16)
                for (int j = 0; j < STREAMS; j++)
                    s[j] = _mm512_add_ps(s[j], _mm512_load_ps(base + j * seg + i));
            for (int j = 1; j < STREAMS; j++) s[0] = _mm512_add_ps(s[0], s[j]);
            total += _mm512_reduce_add_ps(s[0]);
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
    dtype: str  # f32, f16, bf16, or int4 (the Q4_0 GGUF compiled with -q int4)

    @property
    def name(self) -> str:
        return f"{self.model}-{self.dtype}"

    @property
    def llama_variant(self) -> str:
        """The llama.cpp run this case is compared with: the same weights at the same width."""
        return "Q4_0" if self.dtype == "int4" else "F16"

    def source(self, models: dict[str, Path]) -> Path:
        """What ferrumc compiles: the Q4_0 GGUF for int4; else the Hugging Face copy where there
        is one (same values; skips the GGUF vocabulary parse), else the F16 GGUF."""
        if self.dtype == "int4":
            return models[f"{self.model}-q4_0"]
        return models.get(f"{self.model}-hf", models[self.model])

    def compile_flags(self) -> list[str]:
        return ["-q", "int4"] if self.dtype == "int4" else ["--dtype", self.dtype]


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


def adjacent_share(runs: Runs, decode_bytes: float) -> str:
    """Each run's decode bytes per second over the read bandwidth measured just before it:
    "adjacent median X%, A-B%"."""
    pairs = zip(runs.values.get("decode1", []), runs.values.get("read_bw", []), strict=True)
    shares = sorted(100 * d * decode_bytes / (bw * 1e9) for d, bw in pairs)
    if not shares:
        return "adjacent -"
    return f"adjacent median {statistics.median(shares):.0f}%, {shares[0]:.0f}-{shares[-1]:.0f}%"


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
    exe = cache / "readbw8"
    if not exe.exists():
        src = cache / "readbw8.c"
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
    """Compile into the cache unless it holds one from the same compiler source; returns wall
    seconds, manifest phase timings and bundle MB."""
    from ferrumc.codegen.cache import source_digest

    bundle = cache / f"{case.name}.ferrum"
    record = cache / f"{case.name}.compile.json"
    source = source_digest()
    fresh = record.exists() and json.loads(record.read_text()).get("source") == source
    if not bundle.exists() or not fresh:
        if bundle.exists():
            shutil.rmtree(bundle)
        cmd = [sys.executable, "-m", "ferrumc", "compile", str(gguf), *case.compile_flags()]
        start = time.perf_counter()
        run_child([*cmd, "-o", str(bundle)])
        wall = time.perf_counter() - start
        manifest = json.loads((bundle / "manifest.json").read_text())
        record.write_text(
            json.dumps(
                {
                    "wall_s": wall,
                    "phases": manifest.get("timings", {}),
                    "load": load_average(),
                    "source": source,
                }
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


def llama_gguf(models: dict[str, Path], model: str, variant: str) -> Path:
    return models[model] if variant == "F16" else models[f"{model}-q4_0"]


def llama_bench(llama_bin: Path, gguf: Path, threads: int, reps: int) -> dict[str, float]:
    """Prefill of PROMPT tokens into an empty cache; decode of DECODE tokens after PROMPT tokens
    of context (`-d`), as ferrumc's decode follows its prompt, and from an empty cache (what
    `llama-bench -n` alone measures: ~25% faster for SmolLM2, its attention reads no keys)."""
    cmd = [str(llama_bin / "llama-bench"), "-m", str(gguf), "-p", str(PROMPT), "-n", str(DECODE)]
    cmd += ["-d", f"0,{PROMPT}", "-t", str(threads), "-r", str(reps), "-o", "json"]
    out, rss = run_child(cmd)
    figures = {"rss_mib": rss}
    for test in json.loads(out):
        depth = test.get("n_depth", 0)
        if test["n_prompt"] and not test["n_gen"] and depth == 0:
            figures["prefill"] = test["avg_ts"]
        elif test["n_gen"] and not test["n_prompt"]:
            figures["decode1" if depth == PROMPT else "decode1_empty"] = test["avg_ts"]
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


def report(args, info, models, cases, compiled, ours, theirs, bandwidth, loads) -> str:
    """The markdown page: command, machine, then one table per thread count and the compiles."""
    lines = [
        "## CPU: ferrumc and llama.cpp",
        "",
        "Measured by `tools/bench_cpu.py` on the project's shared 2-core machine. Models",
        "(`tools/bench_models.py`): SmolLM2-135M-Instruct (its Q4_1 release requantized to F16 by",
        "llama-quantize; both engines read that GGUF) and random weights (seed 0) in Qwen2.5-0.5B's",
        "shape (llama.cpp reads a GGUF, ferrumc compiles a Hugging Face checkpoint holding the same",
        "values). ferrumc's f32 rows compute on the same values widened to f32 (twice the bytes).",
        "int4: each F16 GGUF quantized to Q4_0 by `llama-quantize --pure` (every matrix, the",
        "embedding too); llama.cpp runs that file and ferrumc compiles the same file with",
        "`-q int4`, which keeps the Q4_0 codes and scales (group 32, symmetric) as they are; the",
        "lookup (int4_embedding) and the tied output head both read the int4 embedding. Its",
        "linears round x to int8 per 32 inputs in decode and prefill (`--int4-activations",
        "int8`, the default), as llama.cpp's Q4_0 kernels do.",
        "",
        "Command:",
        "",
        f"    python tools/bench_cpu.py {' '.join(args.argv)}".rstrip(),
        "",
        f"- date: {info['date']}",
        f"- CPU: {info['cpu']}, {info['cores']} cores visible, Linux {info['kernel']}",
        f"- load average (1 min) at start / end: {loads[0]:.2f} / {loads[-1]:.2f}; "
        f"during runs: median {statistics.median(loads):.2f}, max {max(loads):.2f}",
        "- read bandwidth (STREAM-like, 1 GiB, 8 streams per thread, best of 5 passes, "
        "measured before and after the runs, the higher kept): "
        + ", ".join(f"{t} thread{'s' * (t > 1)} {bandwidth[t]:.1f} GB/s" for t in args.threads)
        + ". Adjacent: each ferrumc run's decode bytes per second over the bandwidth "
        "measured just before it (best of 3 passes).",
        f"- {args.reps} repetition{'s' * (args.reps > 1)}, ferrumc and llama-bench alternating; medians. llama-bench: "
        f"`-p {PROMPT} -n {DECODE} -d 0,{PROMPT} -r {args.llama_reps}`. ferrumc: `ferrumc bench BUNDLE "
        f"--prompt-tokens {PROMPT} --decode-tokens {DECODE} --batch {BATCH}` (through the engine).",
        f"- Decode is compared at the same context: ferrumc decodes after its {PROMPT}-token prompt, "
        f"llama.cpp's decode b1 is its tg{DECODE} at depth {PROMPT} (`-d {PROMPT}`); its tg{DECODE} "
        "from an empty cache is given in brackets.",
        "",
    ]
    for t in args.threads:
        lines += [
            f"### {t} thread{'s' * (t > 1)}",
            "",
            "| model | engine | prefill 128 tok/s | decode b1 tok/s | decode b4 tok/s (total) "
            "| load to 1st token s | peak RSS MiB "
            "| decode roofline tok/s (% reached; adjacent: per run) "
            "| ratio vs llama.cpp at the same width (F16 or Q4_0): prefill / decode b1 |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for case in cases:
            r, c = ours[(case.name, t)], compiled[case.name]
            roof = bandwidth[t] * 1e9 / c["decode_bytes"]
            d1 = r.median("decode1")
            ref = theirs.get((case.model, case.llama_variant, t))
            ratio = "-"
            if ref is not None and case.dtype in ("f16", "int4"):
                ratio = (
                    f"{r.median('prefill') / ref.median('prefill'):.2f}x / "
                    f"{d1 / ref.median('decode1'):.2f}x"
                )
            lines.append(
                f"| {case.model} | ferrumc {case.dtype} | {fmt(r.median('prefill'))} | {fmt(d1)} "
                f"| {fmt(r.median('decode4'))} | {fmt(r.median('first_token_s'), 2)} "
                f"| {fmt(r.median('rss_mib'), 0)} | {roof:.1f} ({100 * d1 / roof:.0f}%; "
                f"{adjacent_share(r, c['decode_bytes'])}) | {ratio} |"
            )
        for (model, variant, threads), ref in theirs.items():
            if threads != t:
                continue
            # llama.cpp reads every tensor of the file per token (tied: the embedding as output).
            size = llama_gguf(models, model, variant).stat().st_size
            roof = bandwidth[t] * 1e9 / size
            d1 = ref.median("decode1")
            lines.append(
                f"| {model} | llama.cpp {variant} | {fmt(ref.median('prefill'))} "
                f"| {fmt(d1)} ({fmt(ref.median('decode1_empty'))}) | - | - "
                f"| {fmt(ref.median('rss_mib'), 0)} "
                f"| {roof:.1f} ({100 * d1 / roof:.0f}%) | 1 |"
            )
        lines.append("")
    lines += [
        "### Compiles",
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
        default="smollm2:f32,smollm2:f16,smollm2:int4,qwen05b:f16,qwen05b:f32,qwen05b:int4",
        help="model:dtype pairs (models: smollm2, qwen05b; dtypes: f32, f16, bf16, int4)",
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
        compiled[case.name] = compile_bundle(case, case.source(models), args.cache)
        print(f"  {compiled[case.name]['wall_s']:.1f} s, {compiled[case.name]['bundle_mb']:.0f} MB")
    bandwidth = {t: read_bandwidth(args.cache, t) for t in args.threads}
    print(f"read bandwidth: {bandwidth}", flush=True)

    ours: dict[tuple[str, int], Runs] = {}
    theirs: dict[tuple[str, str, int], Runs] = {}  # (model, llama.cpp variant, threads)
    have_llama = (args.llama_bin / "llama-bench").exists()
    for rep in range(args.reps):
        for t in args.threads:
            for model in dict.fromkeys(c.model for c in cases):
                variants = dict.fromkeys(c.llama_variant for c in cases if c.model == model)
                for variant in variants if have_llama else ():
                    load = load_average()
                    got = llama_bench(
                        args.llama_bin, llama_gguf(models, model, variant), t, args.llama_reps
                    )
                    theirs.setdefault((model, variant, t), Runs()).add(got, load)
                    loads.append(load)
                    print(
                        f"rep {rep} t{t} llama.cpp {model} {variant}: {got} (load {load:.2f})",
                        flush=True,
                    )
                for case in (c for c in cases if c.model == model):
                    load = load_average()
                    # The bandwidth just before this run: the machine's drifts within minutes.
                    adjacent = read_bandwidth(args.cache, t, reps=3)
                    got = ferrumc_bench(compiled[case.name]["bundle"], t) | {"read_bw": adjacent}
                    ours.setdefault((case.name, t), Runs()).add(got, load)
                    loads.append(load)
                    print(
                        f"rep {rep} t{t} ferrumc {case.name}: {got} (load {load:.2f})", flush=True
                    )
    loads.append(load_average())
    # Other work on the machine lowers a bandwidth pass; the higher of the two is the roofline.
    bandwidth = {t: max(bw, read_bandwidth(args.cache, t)) for t, bw in bandwidth.items()}
    text = report(args, info, models, cases, compiled, ours, theirs, bandwidth, loads)
    print(text)
    if args.write:
        write_section(args.write, text)


def write_section(path: Path, text: str) -> None:
    """Replace this tool's section of `path` (between its markers), or append one; the rest of
    the page (other tools' figures) is kept."""
    start, end = "<!-- bench_cpu:start -->", "<!-- bench_cpu:end -->"
    page = path.read_text() if path.exists() else ""
    block = f"{start}\n{text.rstrip()}\n{end}\n"
    if start in page and end in page:
        head, rest = page.split(start, 1)
        page = head + block + rest.split(end, 1)[1].lstrip("\n")
    else:
        page = page.rstrip() + ("\n\n" if page else "") + block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page)


if __name__ == "__main__":
    main()
