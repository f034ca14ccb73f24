"""Where a decode step's time goes, by building the model with some kernels' bodies emptied.

    python tools/step_breakdown.py MODEL [-q int4] [--threads 2] [--rounds 30]

Compiles MODEL (anything `ferrumc compile` takes) three times into a temporary folder:
- "full": the bundle as `ferrumc compile` builds it;
- "linears only": every PrimFunc but the linears (and the VM's shape functions) emptied, so a
  step is the linears plus the VM, its builtins and the KV cache's bookkeeping;
- "nothing": every PrimFunc but the shape functions emptied: the VM and the host alone.
An emptied kernel returns at once and leaves its outputs as they were; the step still makes
every call, allocation and KV-cache update. Then tools/ab_decode.py times the three in one
process, alternating, and the differences give the linears', the other kernels' and the VM's
shares. (TVM's own attention kernels count among "the other kernels".) Figures quoted in
docs/benchmarks.md and codegen/NOTES.md ("where a SmolLM2 int4 step goes") come from this.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

# PrimFuncs kept in every variant: the VM's shape computations (emptied, the step's shapes
# would be garbage).
SHAPE_FUNCS = ("shape_func", "compute_symbolic")
LINEARS = ("int4_linear", "linear_")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("model")
    p.add_argument("-q", "--quantize", choices=("int4",), help="as ferrumc compile -q")
    p.add_argument("--threads", type=int, default=2, help="TVM worker threads")
    p.add_argument("--rounds", type=int, default=30, help="tools/ab_decode.py --rounds")
    return p.parse_args()


def empty_kernels_pass(keep: tuple[str, ...]):
    """A module pass that empties every PrimFunc whose name starts with none of `keep`."""
    import tvm

    @tvm.transform.module_pass(opt_level=0, name="EmptyKernels")
    def empty(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        for gv, func in list(mod.functions.items()):
            if isinstance(func, tvm.tirx.PrimFunc) and not gv.name_hint.startswith(keep):
                mod.update_func(gv, func.with_body(tvm.tirx.Evaluate(0)))
        return mod

    return empty


def compile_variant(model: str, out: Path, quantize: str | None, keep: tuple[str, ...] | None):
    import tvm

    from ferrumc.codegen import build
    from ferrumc.codegen.compile import compile_model
    from ferrumc.passes.pipeline import CompileOptions
    from ferrumc.passes.quantization import Int4Quantization

    pipeline = build.relax_pipeline
    if keep is not None:
        build.relax_pipeline = lambda target: tvm.transform.Sequential(
            [pipeline(target), empty_kernels_pass(keep)]
        )
    try:
        options = CompileOptions(quantize=Int4Quantization() if quantize else None)
        compile_model(model, out, options=options, progress=False)
    finally:
        build.relax_pipeline = pipeline


def main() -> None:
    args = parse_args()
    variants = {"full": None, "linears only": SHAPE_FUNCS + LINEARS, "nothing": SHAPE_FUNCS}
    with tempfile.TemporaryDirectory() as tmp:
        bundles = []
        for name, keep in variants.items():
            out = Path(tmp) / f"{name.replace(' ', '-')}.ferrum"
            print(f"compiling {name} ...", flush=True)
            compile_variant(args.model, out, args.quantize, keep)
            bundles.append(str(out))
        ab = Path(__file__).with_name("ab_decode.py")
        cmd = [sys.executable, str(ab), *bundles]
        cmd += ["--threads", str(args.threads), "--rounds", str(args.rounds)]
        result = subprocess.run(cmd, check=True, capture_output=True, text=True)
    print(result.stdout, end="")
    medians = [float(line.split()[-3]) for line in result.stdout.splitlines()[-3:]]
    full, linears, vm = medians
    print(
        f"\nof a {full:.0f} us step (p50): linears {linears - vm:.0f} us, other kernels "
        f"{full - linears:.0f} us, VM and host {vm:.0f} us"
    )


if __name__ == "__main__":
    main()
