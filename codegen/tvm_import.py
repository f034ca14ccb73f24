"""TVM imported without the seconds tvm_ffi spends importing PyTorch.

tvm_ffi tries `import torch` at start-up (for DLPack interop, which ferrumc does not use); where
PyTorch is installed that alone costs ~2.5 s of every server's load-to-first-token. A `None` in
sys.modules makes that import fail at once; later `import torch` elsewhere works as usual.
"""

from __future__ import annotations

import sys
from types import ModuleType


def import_tvm() -> ModuleType:
    if "torch" in sys.modules or "tvm" in sys.modules:
        import tvm

        return tvm
    sys.modules["torch"] = None  # type: ignore[assignment]
    try:
        import tvm
    finally:
        del sys.modules["torch"]
    return tvm


tvm = import_tvm()
