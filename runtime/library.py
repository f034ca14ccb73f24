"""A compiled library loaded into TVM's Relax VM with its weights, called by entry-function name.

`codegen.build` writes `name.so` (or .tar) and `name.json`; the JSON gives the weight order
of the `params` tuple every entry function takes last, and each entry's input and output names.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import tvm
from tvm import relax as rx

from ..errors import BundleError, RequestError
from ..ir.types import DType, storage_shape


class Library:
    """One library in one VM on one device; the weights are uploaded once and shared by entries."""

    def __init__(self, path: Path, weights: Mapping[str, np.ndarray], device: str = "cpu") -> None:
        path = Path(path)
        self.path = path
        self.metadata = json.loads(path.with_suffix(".json").read_text())
        self.device = tvm.device(device)
        self.vm = rx.VirtualMachine(tvm.runtime.load_module(str(path)), self.device)
        self.params = [self._upload(spec, weights) for spec in self.metadata["weights"]]

    def _upload(self, spec: dict, weights: Mapping[str, np.ndarray]) -> tvm.runtime.Tensor:
        name = spec["name"]
        if name not in weights:
            raise BundleError(f"{self.path}: weight {name!r} required by the library is missing")
        dtype = DType(spec["dtype"])
        shape = list(storage_shape(dtype, tuple(spec["shape"])))  # u4 arrives as packed bytes
        array = np.ascontiguousarray(weights[name])
        if list(array.shape) != shape or array.dtype != dtype.numpy:
            raise BundleError(
                f"{self.path}: weight {name!r} is {array.dtype}{list(array.shape)}, "
                f"the library expects {dtype.numpy}{shape}"
            )
        return tvm.runtime.tensor(array, self.device)

    def entry(self, name: str) -> tvm.ffi.Function:
        return self.vm[name]

    def run(self, entry: str, inputs: Mapping[str, object]) -> dict[str, np.ndarray]:
        """Call `entry` with inputs by name (arrays, or runtime objects such as the KV cache)."""
        functions = self.metadata["functions"]
        if entry not in functions:
            raise RequestError(f"{self.path} has no entry {entry!r}; entries: {sorted(functions)}")
        names = functions[entry]["inputs"]
        if set(names) != set(inputs):
            raise RequestError(f"entry {entry!r} takes inputs {names}, got {sorted(inputs)}")
        args = [self._arg(inputs[n]) for n in names]
        result = self.vm[entry](*args, self.params)
        outputs = functions[entry]["outputs"]
        values = [result] if len(outputs) == 1 else list(result)
        return {n: v.numpy() for n, v in zip(outputs, values, strict=True)}

    def _arg(self, value: object) -> object:
        if isinstance(value, np.ndarray):
            return tvm.runtime.tensor(np.ascontiguousarray(value), self.device)
        return value
