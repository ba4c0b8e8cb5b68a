"""Execution: a graph run on integers layer by layer (`run`), on intervals (`ranges`, the static
ranges) and compiled image by image (`plan`). Below the graph module: it reads any object with a
graph's ``inputs``, ``nodes`` and ``outputs`` and the ops' specs (`engine.registry`)."""
from .run import RunResult, plan_of, run_from, run_graph, run_node

__all__ = ["RunResult", "plan_of", "run_from", "run_graph", "run_node"]
