"""Map a checkpoint's Hugging Face tensors onto the ferrumc weights a graph declares, refusing any mismatch."""

from __future__ import annotations

import functools
import itertools
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..errors import CheckpointError
from ..ir.types import FLOAT_DTYPES, DType, TensorType, format_shape
from .model import WeightSource
from .models.spec import Architecture
from .safetensors_io import DTYPES, SafetensorsCheckpoint, TensorInfo

_SAFETENSORS_NAME = {ours: theirs for theirs, ours in DTYPES.items()}


@functools.cache
def _regex(pattern: str) -> re.Pattern[str]:
    text = re.escape(pattern).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{e\}", r"(?P<e>\d+)")
    return re.compile(text + "$")


@dataclass
class _Parts:
    """Where one ferrumc weight's data comes from: a whole tensor, expert slices, or half a fused tensor."""

    whole: TensorInfo | None = None
    experts: dict[int, TensorInfo] = field(default_factory=dict)
    fused: tuple[TensorInfo, int, int] | None = None  # (tensor, which piece, of how many)

    def names(self) -> list[str]:
        infos = [self.whole, *self.experts.values(), self.fused[0] if self.fused else None]
        return [i.name for i in infos if i is not None]


def match_weight(
    arch: Architecture, name: str
) -> tuple[re.Match[str], str | tuple[str, ...]] | None:
    """The architecture's first name pattern matching the checkpoint tensor `name`, with its
    ferrumc target; None for a tensor the architecture does not know."""
    for pattern, target in arch.weight_names.items():
        m = _regex(pattern).match(name)
        if m:
            return m, target
    return None


def _is_unused(arch: Architecture, name: str) -> bool:
    return any(_regex(p).match(name) for p in arch.unused)


def stored_dtype(ckpt: SafetensorsCheckpoint, arch: Architecture) -> DType | None:
    """The float dtype holding most of the mapped tensors' elements (None if there are none)."""
    sizes: Counter[DType] = Counter()
    for name, info in ckpt.tensors.items():
        if match_weight(arch, name) and info.dtype in ("F32", "F16", "BF16"):
            sizes[info.ferrum_dtype()] += int(np.prod(info.shape))
    return sizes.most_common(1)[0][0] if sizes else None


def _shape_error(
    info: TensorInfo, target: str, got: tuple[int, ...], want: tuple
) -> CheckpointError:
    return CheckpointError(
        f"tensor {info.name} in {info.file} has shape {format_shape(got)}, but the config "
        f"expects {format_shape(want)} (for {target}); config.json and weights disagree"
    )


def _place(
    parts: _Parts,
    info: TensorInfo,
    target: str,
    m: re.Match[str],
    piece: tuple[int, int],
    want: TensorType,
) -> None:
    """Record `info` as (a piece of) `target`, checking its shape against the declared type."""
    shape, (k, n) = tuple(want.shape), piece
    expert = m.groupdict().get("e")
    if parts.whole or parts.fused or (parts.experts and expert is None):
        raise CheckpointError(
            f"{target} is given twice in {info.file.parent}: by {parts.names()[0]} and {info.name}"
        )
    if expert is not None:
        e = int(expert)
        if e >= shape[0] or info.shape != shape[1:]:
            raise _shape_error(info, f"expert {e} of {target}", info.shape, shape[1:])
        if e in parts.experts:
            raise CheckpointError(f"expert {e} of {target} is given twice in {info.file.parent}")
        parts.experts[e] = info
    elif n > 1:
        fused = (shape[0], shape[1] * n, *shape[2:])
        if info.shape != fused:
            raise _shape_error(info, target, info.shape, fused)
        parts.fused = (info, k, n)
    else:
        if info.shape != shape:
            raise _shape_error(info, target, info.shape, shape)
        parts.whole = info


def _missing_name(arch: Architecture, target: str, parts: _Parts) -> str:
    """The HF tensor a missing ferrumc weight should have come from (first table entry)."""
    for pattern, mapped in arch.weight_names.items():
        if isinstance(mapped, str) and (m := _regex(mapped).match(target)):
            missing = next(e for e in itertools.count() if e not in parts.experts)
            return pattern.format(i=m.groupdict().get("i"), e=missing)
    return target


def map_weights(
    ckpt: SafetensorsCheckpoint,
    arch: Architecture,
    expected: dict[str, TensorType],
    tied: bool,
) -> WeightSource:
    """A WeightSource for exactly `expected`; every checkpoint tensor must be mapped or deliberately unused."""
    parts: dict[str, _Parts] = {t: _Parts() for t in expected}
    unused: list[str] = []
    for name, info in ckpt.tensors.items():
        found = match_weight(arch, name)
        if found is None:
            if _is_unused(arch, name):
                unused.append(name)
                continue
            raise CheckpointError(
                f"tensor {name} in {info.file} is not part of a {arch.model_type} model "
                "(ferrumc has no mapping for it); is this checkpoint a variant ferrumc does not support?"
            )
        m, mapped = found
        targets = [mapped] if isinstance(mapped, str) else list(mapped)
        targets = [t.format(i=m.groupdict().get("i")) for t in targets]
        if tied and targets == ["lm_head.weight"]:
            unused.append(name)  # tied embeddings: some checkpoints store the copy anyway
            continue
        for k, target in enumerate(targets):
            if target not in expected:
                raise CheckpointError(
                    f"tensor {name} in {info.file} maps to {target}, which a {arch.model_type} model "
                    "with this config.json does not have; config.json and weights disagree"
                )
            if expected[target].dtype in FLOAT_DTYPES and info.ferrum_dtype() not in FLOAT_DTYPES:
                raise CheckpointError(
                    f"tensor {name} in {info.file} has dtype {info.dtype}, expected a float type"
                )
            _place(parts[target], info, target, m, (k, len(targets)), expected[target])
    loaders, storage = {}, {}
    for target, want in expected.items():
        p = parts[target]
        complete = p.whole or p.fused or (p.experts and len(p.experts) == want.shape[0])
        if not complete:
            hf = _missing_name(arch, target, p)
            raise CheckpointError(
                f"tensor {hf} (ferrumc {target}, {want}) is missing from {ckpt.directory}; "
                "re-download the checkpoint or check config.json"
            )
        loaders[target] = _loader(ckpt, p, want)
        stored = {ckpt.tensors[n].dtype for n in p.names()}
        if stored != {_SAFETENSORS_NAME[want.dtype]}:
            storage[target] = "+".join(sorted(stored))  # converted on load
    return WeightSource(dict(expected), loaders, sorted(unused), storage)


def _loader(ckpt: SafetensorsCheckpoint, p: _Parts, want: TensorType) -> Callable[[], np.ndarray]:
    dtype = want.dtype.numpy

    def load() -> np.ndarray:
        if p.whole is not None:
            array = ckpt.read(p.whole.name)
        elif p.fused is not None:
            info, k, n = p.fused
            rows = info.shape[1] // n
            array = ckpt.read(info.name)[:, k * rows : (k + 1) * rows]
        else:
            array = np.stack([ckpt.read(p.experts[e].name) for e in range(len(p.experts))])
        return np.ascontiguousarray(array.astype(dtype, copy=False))

    return load
