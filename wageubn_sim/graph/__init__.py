"""The integer graph (`ir`, numpy only), its importer from torch and the comparison (torch)."""
from .ir import Graph, GraphInput, Node, RunResult, load_graph

__all__ = ["Graph", "GraphInput", "Node", "RunResult", "load_graph"]
