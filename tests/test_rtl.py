"""The RTL reference datapath under cocotb + Icarus Verilog, on a demo bundle: it passes on the
bundle and fails on a copy with one expected bit flipped (a consistent forgery)."""
import os
import shutil
from pathlib import Path

import pytest
from forgery import forge_value

RTL = Path(__file__).resolve().parent.parent / "rtl_vectors"

if shutil.which("iverilog") is None:
    if os.environ.get("WAGEUBN_REQUIRE_RTL"):
        raise RuntimeError("WAGEUBN_REQUIRE_RTL is set but iverilog is not installed")
    pytest.skip("iverilog is not installed (apt-get install iverilog)", allow_module_level=True)

from cocotb_tools.runner import get_results, get_runner  # noqa: E402


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
def simulator(tmp_path_factory):
    build = tmp_path_factory.mktemp("sim_build")
    runner = get_runner("icarus")
    runner.build(sources=[RTL / "wageubn_mac_layer.v"], hdl_toplevel="wageubn_mac_layer",
                 build_dir=build, always=True)
    return runner, build


def _run(simulator, bundle, results):
    runner, build = simulator
    try:
        runner.test(hdl_toplevel="wageubn_mac_layer", test_module="test_wageubn_layer",
                    test_dir=RTL, build_dir=build, results_xml=str(results),
                    extra_env={"WAGEUBN_BUNDLE": str(bundle),
                               "PYTHONPATH": os.pathsep.join([str(RTL), str(RTL.parent)])})
    except SystemExit:  # the runner exits when a cocotb test fails; the results say which
        pass
    return get_results(results)  # (tests, failures)


def test_rtl_datapath_matches_the_demo_bundle(simulator, demo_bundle, tmp_path):
    assert _run(simulator, demo_bundle, tmp_path / "ok.xml") == (1, 0)


def test_rtl_check_fails_on_one_flipped_bit(simulator, demo_bundle, tmp_path):
    forged = shutil.copytree(demo_bundle, tmp_path / "forged")
    forge_value(forged, "_3_relu1/output", index=5, flip_bit=0)  # one expected bit
    assert _run(simulator, forged, tmp_path / "bad.xml") == (1, 1)
