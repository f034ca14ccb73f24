"""The VM-code trims (codegen/vm_trim.py): what they drop, what they keep, and that it still runs."""

from __future__ import annotations

import numpy as np
import pytest
import tvm

from ferrumc.codegen import build as build_module
from ferrumc.codegen.build import build, relax_pipeline
from ferrumc.codegen.lower import lower_module
from ferrumc.codegen.targets import TARGETS
from ferrumc.codegen.vm_trim import DropTensorKills, DropWeightChecks
from ferrumc.runtime.vm import VMExecutor
from ferrumc.tests.codegen.tiny_paged import random_weights, tiny_paged_module, vm_greedy_batch

LLVM = TARGETS["llvm"]


def _vm_code(trim: bool) -> tvm.IRModule:
    """The tiny module through the build's Relax pipeline, with or without the trims."""
    pipeline = relax_pipeline(LLVM)
    passes = [
        p
        for p in pipeline.passes  # type: ignore[attr-defined]
        if trim or p.info.name not in ("DropWeightChecks", "DropTensorKills")
    ]
    with LLVM.tvm_target():
        return tvm.transform.Sequential(passes)(lower_module(tiny_paged_module(), LLVM).mod)


def _calls(func: tvm.relax.Function) -> list[str]:
    """Each binding's callee: a call_packed symbol or an op name."""
    names = []
    for block in func.body.blocks:
        for b in block.bindings:
            v = b.value
            if isinstance(v, tvm.relax.Call):
                op = v.op
                if isinstance(op, tvm.relax.ExternFunc):
                    names.append(str(op.global_symbol))
                elif isinstance(op, tvm.ir.Op):
                    names.append(op.name)
    return names


@pytest.fixture(scope="module")
def vm_code() -> tuple[tvm.IRModule, tvm.IRModule]:
    return _vm_code(trim=False), _vm_code(trim=True)


def test_weight_checks_are_dropped_and_input_checks_kept(vm_code):
    before, after = vm_code
    for entry in ("prefill", "decode"):
        was, now = _calls(before[entry]), _calls(after[entry])
        weights = len(before[entry].params[-1].ty.fields)
        # Untrimmed: the tuple once, then every weight's dtype and rank, and its shape.
        assert was.count("vm.builtin.check_tuple_info") == 1
        assert was.count("vm.builtin.check_tensor_info") >= weights
        # Trimmed: only the inputs' checks (tokens, positions, ...) remain.
        assert "vm.builtin.check_tuple_info" not in now
        assert (
            now.count("vm.builtin.check_tensor_info")
            == was.count("vm.builtin.check_tensor_info") - weights
        )
        assert now.count("vm.builtin.check_tensor_info") >= 2  # tokens and positions


def test_decode_keeps_only_storage_kills(vm_code):
    before, after = vm_code
    kills = "relax.vm.kill_object"
    assert _calls(before["decode"]).count(kills) > _calls(after["decode"]).count(kills) > 0
    storages = _calls(after["decode"]).count("relax.vm.alloc_storage")
    assert _calls(after["decode"]).count(kills) == storages
    # prefill is left as it was.
    assert _calls(after["prefill"]).count(kills) == _calls(before["prefill"]).count(kills)


def test_trims_are_idempotent(vm_code):
    _, after = vm_code
    again = tvm.transform.Sequential([DropWeightChecks(), DropTensorKills()])(after)
    for entry in ("prefill", "decode"):
        assert _calls(again[entry]) == _calls(after[entry])


def test_trimmed_and_untrimmed_decode_agree(tmp_path, monkeypatch):
    """The tiny module built with and without the trims: the same logits for a batched
    prefill and two decode steps (the numerics against the interpreter: test_llvm_tiny.py)."""
    module = tiny_paged_module()
    weights = random_weights(module)
    logits = [vm_greedy_batch(VMExecutor(build(module, LLVM, tmp_path / "trim").library,
                                         weights), [0, 1], [[1, 2, 3], [4, 5]], 3)]  # fmt: skip
    skip = tvm.transform.Sequential([], name="skip")
    monkeypatch.setattr(build_module, "DropWeightChecks", lambda: skip)
    monkeypatch.setattr(build_module, "DropTensorKills", lambda: skip)
    plain = build(module, LLVM, tmp_path / "plain")
    logits.append(
        vm_greedy_batch(VMExecutor(plain.library, weights), [0, 1], [[1, 2, 3], [4, 5]], 3)
    )
    np.testing.assert_array_equal(logits[0], logits[1])
