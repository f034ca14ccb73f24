"""The ferrumc IR: typed SSA graphs of LLM ops, a printer/parser, a verifier and a numpy interpreter."""

from .graph import Graph, GraphBuilder, Module, Node, Value, live_nodes, rebuild
from .ops import OPS, Op
from .parser import parse_graph, parse_module
from .printer import print_graph, print_module
from .rope import RopeScaling
from .types import DType, KVCacheType, TensorType
from .verify import verify, verify_module

__all__ = [
    "OPS",
    "DType",
    "Graph",
    "GraphBuilder",
    "KVCacheType",
    "Module",
    "Node",
    "Op",
    "RopeScaling",
    "TensorType",
    "Value",
    "live_nodes",
    "parse_graph",
    "parse_module",
    "print_graph",
    "print_module",
    "rebuild",
    "verify",
    "verify_module",
]
