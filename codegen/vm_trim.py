"""Relax passes that take per-call bookkeeping out of the VM code of the entry functions.

A decode step of a small model is short enough that the Relax VM's own instructions weigh on
it: for SmolLM2 (30 layers, 303 weights) VMShapeLower and KillAfterLastUse leave ~3,200
builtin calls per step against ~400 kernels. Two kinds are dropped:
- `DropWeightChecks`: every call re-checks each weight of the `params` tuple (its dtype, rank
  and shape: three builtins a weight). The loader checks each weight's dtype and shape once,
  when it wraps it (runtime/library.py), and the tuple does not change between calls.
- `DropTensorKills`: after its last use every tensor's register is cleared (`kill_object`), so
  that its memory may return to the pool early. For a weight that frees nothing (the tuple
  holds it); in a decode step's few small tensors it frees nothing worth a call each. Storage
  kills stay, and functions not named stay as they are (prefill's activations are large).
"""

from __future__ import annotations

from collections.abc import Iterable

import tvm
from tvm import relax as rx

WEIGHTS = "params"  # the entry functions' last parameter: every weight, in manifest order
CHECKS = frozenset(
    {"vm.builtin.check_tuple_info", "vm.builtin.check_tensor_info", "vm.builtin.match_shape"}
)
KILL = tvm.ir.Op.get("relax.vm.kill_object")
ALLOC_STORAGE = tvm.ir.Op.get("relax.vm.alloc_storage")


def _extern(value: rx.Expr) -> str | None:
    """The symbol a call_packed binding calls, if it is one."""
    if isinstance(value, rx.Call) and isinstance(value.op, rx.ExternFunc):
        return str(value.op.global_symbol)
    return None


def _filter(func: rx.Function, keep) -> rx.Function:
    """func with only the bindings `keep` accepts, in a body of non-dataflow blocks."""
    body = func.body
    blocks = [rx.BindingBlock([b for b in block.bindings if keep(b)]) for block in body.blocks]
    new_body = rx.SeqExpr(blocks, body.body)
    return rx.Function(func.params, new_body, func.ret_ty, func.is_pure, func.attrs)


def _used_vars(func: rx.Function) -> set[rx.Var]:
    used: set[rx.Var] = set()

    def visit(expr: rx.Expr) -> None:
        if isinstance(expr, rx.Var):
            used.add(expr)

    for block in func.body.blocks:
        for binding in block.bindings:
            rx.analysis.post_order_visit(binding.value, visit)
    rx.analysis.post_order_visit(func.body.body, visit)
    return used


def _bound_by(func: rx.Function, value_matches) -> set[rx.Var]:  # value -> bool
    """The variables whose bound value `value_matches`."""
    return {b.var for block in func.body.blocks for b in block.bindings if value_matches(b.value)}


def drop_weight_checks(func: rx.Function) -> rx.Function:
    weights = next((p for p in func.params if p.name == WEIGHTS), None)
    if weights is None:
        return func
    items = _bound_by(
        func, lambda v: isinstance(v, rx.TupleGetItem) and v.tuple_value.same_as(weights)
    )

    def is_weight_check(binding: rx.Binding) -> bool:
        value = binding.value
        if _extern(value) not in CHECKS:
            return False
        subject = value.args[0]
        return subject.same_as(weights) or subject in items

    func = _filter(func, lambda b: not is_weight_check(b))
    # The items fetched only to be checked are now unused.
    used = _used_vars(func)
    return _filter(func, lambda b: b.var not in items or b.var in used)


def drop_tensor_kills(func: rx.Function) -> rx.Function:
    storages = _bound_by(func, lambda v: isinstance(v, rx.Call) and v.op.same_as(ALLOC_STORAGE))

    def is_tensor_kill(binding: rx.Binding) -> bool:
        value = binding.value
        return (
            isinstance(value, rx.Call) and value.op.same_as(KILL) and value.args[0] not in storages
        )

    return _filter(func, lambda b: not is_tensor_kill(b))


def _function_pass(name: str, rewrite, functions: Iterable[str] | None):
    names = None if functions is None else frozenset(functions)

    @tvm.transform.module_pass(opt_level=0, name=name)
    def apply(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        out = tvm.IRModule(mod.functions, attrs=mod.attrs)
        for gv, func in mod.functions.items():
            if isinstance(func, rx.Function) and (names is None or gv.name_hint in names):
                out[gv] = rewrite(func)
        return out

    return apply


def DropWeightChecks() -> tvm.transform.Pass:
    """After VMShapeLower: no per-call checks of the `params` tuple and its tensors."""
    return _function_pass("DropWeightChecks", drop_weight_checks, None)


def DropTensorKills(functions: Iterable[str] = ("decode",)) -> tvm.transform.Pass:
    """After KillAfterLastUse: in `functions`, no kill_object but for storages."""
    return _function_pass("DropTensorKills", drop_tensor_kills, functions)
