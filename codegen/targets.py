"""Compilation targets as data: one frozen record per target, with the host CPU detected for llvm."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CodegenError
from .tvm_import import tvm

# CPU flags (as /proc/cpuinfo spells them) that decide which kernels a schedule may emit.
CPU_FEATURES = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "asimd",
    "asimddp",
    "sve",
)


@dataclass(frozen=True)
class Target:
    """What codegen needs to know about a target; `tvm_target()` turns it into TVM's object."""

    name: str
    # TVM target dict (the CLI string form is refused by TVM 0.27) and, for GPUs, the host's.
    target: dict[str, object]
    host: dict[str, object] | None
    # The device the VM allocates on: "cpu", "cuda" or "metal".
    device: str
    # Width of the widest SIMD register the kernels may use, in bits (0 for GPUs).
    vector_bits: int = 0
    # Kernels must bind loops to GPU blocks and threads (dlight's GPU rules do it).
    needs_thread_binding: bool = False
    has_amx: bool = False
    num_cores: int = 1
    # How `export_library` should package the code: a shared object, or a tar of objects
    # when the host linker cannot link for the target (Metal's Mach-O from Linux).
    library_format: str = "so"
    # CPU or GPU features detected or assumed, recorded in the bundle manifest later.
    features: tuple[str, ...] = field(default_factory=tuple)

    def tvm_target(self) -> tvm.target.Target:
        if self.host is None:
            return tvm.target.Target(self.target)
        return tvm.target.Target(self.target, host=self.host)

    def describe(self) -> dict[str, object]:
        """A JSON-able record of the target, for manifests and logs."""
        return {
            "name": self.name,
            "target": self.target,
            "host": self.host,
            "device": self.device,
            "features": list(self.features),
        }


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU flags the kernel reports (x86 `flags`, Arm `Features`); empty where unreadable."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def llvm_cpu_name(flags: frozenset[str]) -> str:
    """The LLVM CPU to compile for: LLVM's own guess, except that AMX needs `sapphirerapids`.

    On a VM LLVM may call an AMX-capable Xeon `rocketlake`, and AMX code then aborts in
    instruction selection (TVM.md), so the flags, not the name, decide.
    """
    if "amx_tile" in flags:
        return "sapphirerapids"
    return str(tvm.get_global_func("target.llvm_get_system_cpu")())


def llvm_target(
    mcpu: str | None = None, num_cores: int | None = None, flags: frozenset[str] | None = None
) -> Target:
    """An llvm target for this machine, or for the CPU described by the arguments."""
    flags = cpu_flags() if flags is None else flags
    mcpu = mcpu or llvm_cpu_name(flags)
    cores = num_cores or len(os.sched_getaffinity(0))
    if "avx512f" in flags:
        vector_bits = 512
    elif "avx2" in flags:
        vector_bits = 256
    else:
        vector_bits = 128
    return Target(
        name="llvm",
        target={"kind": "llvm", "mcpu": mcpu, "num-cores": cores},
        host=None,
        device="cpu",
        vector_bits=vector_bits,
        has_amx={"amx_tile", "amx_int8"} <= flags,
        num_cores=cores,
        features=tuple(f for f in CPU_FEATURES if f in flags),
    )


# CUDA compiles here without a GPU, but only to a module of CUDA C source (TVM.md).
CUDA = Target(
    name="cuda",
    target={"kind": "cuda", "arch": "sm_90"},
    host={"kind": "llvm"},
    device="cuda",
    needs_thread_binding=True,
    features=("sm_90",),
)

# Metal code is MSL source inside Mach-O objects; a Mac links and loads it (TVM.md).
METAL = Target(
    name="metal",
    target={"kind": "metal"},
    host={"kind": "llvm", "mtriple": "arm64-apple-macos"},
    device="metal",
    needs_thread_binding=True,
    library_format="tar",
    features=("msl",),
)

TARGETS: dict[str, Target] = {"llvm": llvm_target(), "cuda": CUDA, "metal": METAL}


def get_target(name: str) -> Target:
    """The target called `name` (llvm: this machine's CPU; `llvm_target` describes another)."""
    if name not in TARGETS:
        raise CodegenError(f"unknown target {name!r}; valid: {', '.join(TARGETS)}")
    return TARGETS[name]
