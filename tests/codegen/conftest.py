"""Codegen tests need TVM (the `compile` extra); without it they are not collected at all."""

from __future__ import annotations

import importlib.util

collect_ignore_glob = [] if importlib.util.find_spec("tvm") else ["test_*.py"]
