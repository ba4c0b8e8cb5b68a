"""The `wageubn-sim` command line: every command, its outputs and its exit codes."""
import json

import numpy as np
from click.testing import CliRunner

from wageubn_sim.cli import main
from wageubn_sim.demo import DEMO_DATA

MODEL = "wageubn_sim.demo:demo_model"


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_help_and_version():
    r = run("--help")
    assert r.exit_code == 0
    for cmd in ("demo", "compile", "simulate", "compare", "vectors", "audit", "verify", "modes"):
        assert cmd in r.output
        assert run(cmd, "--help").exit_code == 0
    assert "wageubn-sim" in run("--version").output


def test_modes_table_lists_every_mode():
    r = run("modes")
    assert r.exit_code == 0
    for name in ("Rounding.HALF_EVEN", "AP_RND_CONV", "Overflow.SAT_SYM", "AP_SAT_SYM", "narrow=1", "DOWN"):
        assert name in r.output


def test_demo_writes_everything_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "demo"
    r = run("demo", "--out", out)
    assert r.exit_code == 0, r.output
    assert "bit-exact" in r.output and "all match" in r.output
    for rel in ("graph/graph.json", "vectors/manifest.json", "audit/audit.html", "audit/audit.csv"):
        assert (out / rel).is_file(), rel
    assert run("verify", out / "vectors").exit_code == 0
    before = (out / "vectors" / "manifest.json").read_bytes()
    r = run("demo", "-o", out)  # -o as in every command that writes
    assert r.exit_code == 2 and "exists" in r.output
    assert run("demo", "--out", out, "--force").exit_code == 0
    assert (out / "vectors" / "manifest.json").read_bytes() == before  # same inputs, same bytes


def test_compile_simulate_compare_vectors_audit(tmp_path):
    x = np.load(DEMO_DATA)["test_images"][:3][:, None] / 16.0
    np.save(tmp_path / "x.npy", x)
    graph = tmp_path / "g"
    r = run("compile", MODEL, "--weights", DEMO_DATA, "--input", tmp_path / "x.npy", "-o", graph)
    assert r.exit_code == 0, r.output
    r = run("simulate", graph, "--input", tmp_path / "x.npy", "-o", tmp_path / "y.npy")
    assert r.exit_code == 0, r.output
    y = np.load(tmp_path / "y.npy", allow_pickle=False)
    assert y.shape == (3, 10) and y.dtype == np.int64
    r = run("compare", MODEL, "--weights", DEMO_DATA, "--input", tmp_path / "x.npy",
            "--json", tmp_path / "cmp.json")
    assert r.exit_code == 0 and "bit-exact" in r.output
    assert json.loads((tmp_path / "cmp.json").read_text())["exact"] is True
    before = (tmp_path / "cmp.json").read_bytes()
    r = run("compare", MODEL, "--weights", DEMO_DATA, "--input", tmp_path / "x.npy",
            "--json", tmp_path / "cmp.json")  # an existing report is kept unless --force
    assert r.exit_code == 2 and "--force" in r.output
    assert (tmp_path / "cmp.json").read_bytes() == before
    assert run("compare", MODEL, "--weights", DEMO_DATA, "--input", tmp_path / "x.npy",
               "--json", tmp_path / "cmp.json", "--force").exit_code == 0
    assert (tmp_path / "cmp.json").read_bytes() == before  # same inputs, same bytes
    r = run("vectors", graph, "--random", 2, "--seed", 3, "-o", tmp_path / "v", "--layout", "NHWC",
            "--lanes", 2, "--formats", "mem,hex,npy")
    assert r.exit_code == 0, r.output
    manifest = json.loads((tmp_path / "v" / "manifest.json").read_text())
    assert manifest["seed"] == 3 and manifest["command"].startswith("wageubn-sim vectors")
    assert run("verify", tmp_path / "v").exit_code == 0
    r = run("audit", graph, "--input", tmp_path / "x.npy", "-o", tmp_path / "a")
    assert r.exit_code == 0 and (tmp_path / "a" / "audit.md").is_file()


def test_bad_input_exits_2_and_leaves_nothing(tmp_path):
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((1, 1, 8, 8)))
    cases = [
        ("compile", "no.such.module:factory", "--input", x, "-o", tmp_path / "g1"),
        ("compile", "wageubn_sim.demo:nothing", "--input", x, "-o", tmp_path / "g2"),
        ("compile", MODEL, "--weights", tmp_path / "missing.pt", "--input", x, "-o", tmp_path / "g3"),
        ("compile", MODEL, "--input", tmp_path / "missing.npy", "-o", tmp_path / "g4"),
        ("compile", MODEL, "--random", 1, "--shape", "2,8,8", "-o", tmp_path / "g5"),
        ("compile", MODEL, "--input", x, "--input-format", "q16", "-o", tmp_path / "g6"),
        ("simulate", tmp_path / "nograph", "--input", x, "-o", tmp_path / "y.npy"),
        ("verify", tmp_path),
    ]
    for args in cases:
        r = run(*args)
        assert r.exit_code == 2, (args, r.output)
        assert "Error" in r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy"]
    graph = tmp_path / "g"
    assert run("compile", MODEL, "--input", x, "-o", graph).exit_code == 0
    r = run("compile", MODEL, "--input", x, "-o", graph)
    assert r.exit_code == 2 and "--force" in r.output
    r = run("simulate", graph, "--input", tmp_path / "x.npy", "-o", tmp_path / "y.npy")
    assert r.exit_code == 0
    r = run("simulate", graph, "--input", tmp_path / "x.npy", "-o", tmp_path / "y.npy")
    assert r.exit_code == 2 and "--force" in r.output
    assert run("simulate", graph, "--input", tmp_path / "x.npy", "-o", tmp_path / "y.npy",
               "--force").exit_code == 0
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left
    np.save(tmp_path / "bad.npy", np.zeros((1, 2, 8, 8)))
    r = run("vectors", graph, "--input", tmp_path / "bad.npy", "-o", tmp_path / "v")
    assert r.exit_code == 2 and "does not fit" in r.output and not (tmp_path / "v").exists()


def test_compare_exit_code_1_when_diverging(tmp_path):
    np.save(tmp_path / "x.npy", np.load(DEMO_DATA)["test_images"][:3][:, None] / 16.0)
    r = run("compare", MODEL, "--weights", DEMO_DATA, "--input", tmp_path / "x.npy",
            "--accumulator", "14:SAT:kernel_major:2")  # 14 bits hold the linear layer's bias
    assert r.exit_code == 1 and "accumulator saturation" in r.output
    r = run("compare", MODEL, "--weights", DEMO_DATA, "--input", tmp_path / "x.npy",
            "--accumulator", "12:SAT")  # they do not: refused (docs/arithmetic.md section 9)
    assert r.exit_code == 2 and "outside the 12-bit saturating accumulator it preloads" in r.output
    r = run("compare", MODEL, "--weights", DEMO_DATA, "--input", tmp_path / "x.npy",
            "--accumulator", "12:CLAMP")
    assert r.exit_code == 2 and "unknown overflow mode" in r.output


def test_train_reports_integer_and_float_accuracy(tmp_path):
    r = run("train", "--epochs", 1, "--limit", 64, "--batch", 16, "--step-vectors", tmp_path / "s")
    assert r.exit_code == 0, r.output
    assert "integer 8-bit engine" in r.output and "float" in r.output
    assert run("verify", tmp_path / "s").exit_code == 0
    assert run("train", "--epochs", 0).exit_code == 2
    r = run("train", "--epochs", 1, "--limit", 32, "--step-vectors", tmp_path / "s")
    assert r.exit_code == 2 and "--force" in r.output


def test_the_readme_fold_then_export_recipe_runs_as_written(tmp_path):
    """The README's way to export BatchNorm exactly: `compile ... --fold-bn N` then `export`,
    N read from the README itself; and the width it warns about is refused with the layer named."""
    import re
    from pathlib import Path
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    bits = int(re.search(r"`compile \.\.\. --fold-bn (\d+)` then `export`", readme).group(1))
    weights = ("--weights", DEMO_DATA, "--random", 1, "--shape", "1,8,8")
    assert run("compile", MODEL, *weights, "--fold-bn", bits, "-o", tmp_path / "g").exit_code == 0
    r = run("export", tmp_path / "g", "-o", tmp_path / "m.onnx")
    assert r.exit_code == 0 and (tmp_path / "m.onnx").is_file(), r.output
    assert run("compile", tmp_path / "m.onnx", "-o", tmp_path / "back").exit_code == 0
    assert run("compile", MODEL, *weights, "--fold-bn", 16, "-o", tmp_path / "g16").exit_code == 0
    r = run("export", tmp_path / "g16", "-o", tmp_path / "m16.onnx")
    assert r.exit_code == 2 and "layer 1: offset (27 bits on 2**-26) is not exactly a float32" in r.output
    assert "27-bit offsets" in readme
