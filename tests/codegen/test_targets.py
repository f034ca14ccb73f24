"""Targets are data: host detection for llvm, the fixed GPU entries, and a helpful unknown-name error."""

from __future__ import annotations

from pathlib import Path

import pytest

from ferrumc.codegen.targets import TARGETS, cpu_flags, get_target, llvm_target
from ferrumc.errors import FerrumError

SAPPHIRE = frozenset(
    ["fma", "avx2", "avx512f", "avx512bw", "avx512_vnni", "amx_tile", "amx_int8", "amx_bf16"]
)


def test_targets_table_has_the_three_backends():
    assert set(TARGETS) == {"llvm", "cuda", "metal"}
    assert TARGETS["llvm"].device == "cpu" and not TARGETS["llvm"].needs_thread_binding
    assert TARGETS["cuda"].needs_thread_binding and TARGETS["metal"].library_format == "tar"


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_every_target_makes_a_tvm_target(name):
    target = TARGETS[name].tvm_target()
    assert target.kind.name == TARGETS[name].target["kind"]


def test_amx_flags_select_sapphirerapids_whatever_llvm_says():
    t = llvm_target(num_cores=2, flags=SAPPHIRE)
    assert t.target == {"kind": "llvm", "mcpu": "sapphirerapids", "num-cores": 2}
    assert t.has_amx and t.vector_bits == 512
    assert "amx_int8" in t.features and "avx512_vnni" in t.features


def test_without_amx_the_llvm_cpu_name_is_kept():
    t = llvm_target(mcpu="haswell", num_cores=4, flags=frozenset({"avx2", "fma"}))
    assert t.target["mcpu"] == "haswell" and not t.has_amx and t.vector_bits == 256


def test_cpu_flags_reads_x86_and_arm_spellings(tmp_path: Path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nflags\t\t: fpu avx2 amx_tile\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd asimddp\n")
    assert cpu_flags(x86) == {"fpu", "avx2", "amx_tile"}
    assert cpu_flags(arm) == {"fp", "asimd", "asimddp"}
    assert cpu_flags(tmp_path / "missing") == frozenset()


def test_unknown_target_names_the_valid_ones():
    with pytest.raises(FerrumError, match="valid: llvm, cuda, metal"):
        get_target("vulkan")
