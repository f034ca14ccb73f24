"""Opening a bundle does not import PyTorch (tvm_ffi would, costing seconds of start-up)."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("tvm")


def test_the_loader_leaves_torch_unimported_and_importable():
    code = (
        "import sys, importlib.util\n"
        "import ferrumc.runtime.loader\n"
        "assert 'tvm' in sys.modules\n"
        "assert 'torch' not in sys.modules, 'importing the runtime imported torch'\n"
        "if importlib.util.find_spec('torch'):\n"
        "    import torch\n"
        "    assert torch.ones(2).sum().item() == 2\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
