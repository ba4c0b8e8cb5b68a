"""The house's rules, checked on the package's source: every import goes from a higher layer
to a lower one (or stays in its own package), no module imports itself back through others,
no module grows past 600 lines, and every op the registry has is one file with its spec.
Imports inside functions count too: a lazy import is still a dependency."""
import ast
from pathlib import Path

import pytest

from wageubn_sim.engine.registry import OPS

PACKAGE = Path(__file__).resolve().parent.parent / "wageubn_sim"
# Lowest first; a package may import its own modules and those of any lower layer.
LAYERS = [
    {"errors", "version", "memory", "files", "fixedpoint"},  # the fixed-point core, files in and out
    {"engine", "scheme"},  # the ops and their kernels; the WAGEUBN quantizers and update unit
    {"execution", "function"},  # running graphs (layer by layer, intervals, the plan); the torch path
    {"config", "models"},  # the torch path's configuration; torchvision-style models
    {"convert"},  # a float model into the torch path's modules
    {"graph", "data"},  # the integer graph, its torch importer, fold, compare; datasets and shards
    {"qonnx"},  # QONNX in and out
    {"training", "reports"},  # integer training; audit and sweep
    {"vectors"},  # test-vector bundles (of inference and of a training step), verify
    {"codegen"},  # the golden model as C (a bundle's layout for its taps)
    {"demo", "warm"},  # the embedded demo; the JIT's warm-up
    {"cli", "(root)"},  # the command line and the package's API
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}
MAX_LINES = 600


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        yield ".".join(parts), is_package, path


def _imports(name: str, is_package: bool, path: Path) -> set:
    """The package's modules ``name`` imports (``from x import y`` counts x.y where y is one)."""
    here = name.split(".") if is_package else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = here[:len(here) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names = {f"{module}.{a.name}" for a in node.names}
            found.update(names)
            if not names <= set(MODULE_NAMES):  # names from the module itself, not its submodules
                found.add(module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m.split(".")[0] == "wageubn_sim"}


MODULE_NAMES = [name for name, _, _ in _modules()]
MODULES = {name: (is_package, path) for name, is_package, path in _modules()}
EDGES = {name: {m for m in _imports(name, *MODULES[name]) if m in MODULES and m != name}
         for name in MODULES}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "(root)"


def test_every_package_has_a_layer():
    assert {_layer(m) for m in MODULES} <= set(RANK), {_layer(m) for m in MODULES} - set(RANK)


def test_imports_go_down_the_layers():
    upward = sorted(f"{a} -> {b}" for a, targets in EDGES.items() for b in targets
                    if RANK[_layer(b)] > RANK[_layer(a)] or
                    (RANK[_layer(b)] == RANK[_layer(a)] and _layer(b) != _layer(a)))
    assert not upward, "imports from a lower layer to a higher one (or across one layer):\n" + "\n".join(upward)


def test_no_import_circles():
    """Depth-first search for a cycle among the package's modules (a package's __init__ that
    re-exports its own modules is left out: importing a module runs its package first)."""
    edges = {a: {b for b in targets if not a.startswith(b + ".")} for a, targets in EDGES.items()}
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_module_is_over_600_lines():
    long = {name: n for name, (_, path) in MODULES.items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, long


@pytest.mark.parametrize("op", sorted(OPS))
def test_each_op_is_one_file_with_its_spec(op):
    """An op's spec lives in its own file under engine/ops, and the engine imports nothing of
    the layers above it."""
    spec = OPS[op]
    module = spec.run.__module__
    assert module.startswith("wageubn_sim.engine.ops."), module
    assert spec.params.__module__.startswith("wageubn_sim.engine.ops."), spec.params.__module__


def test_the_manifest_schema_lists_the_registry_ops():
    """The verifier takes a layer's allowed ops from the registry; the schema file users read
    lists the same ones."""
    import json
    from wageubn_sim.vectors.manifest import SCHEMAS, layer_op_enum, role_pattern, schema, tensor_role
    shipped = json.loads(SCHEMAS[2].read_text())
    assert sorted(layer_op_enum(shipped)) == sorted(OPS) == layer_op_enum(schema(2))
    assert tensor_role(shipped)["pattern"] == role_pattern() == tensor_role(schema(2))["pattern"]
    assert "|thresholds|" in role_pattern() and "|weight|" in role_pattern()
