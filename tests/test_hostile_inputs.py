"""Hostile inputs against the command line, grouped by kind: graph files, inputs, weights,
bundles, outputs and `train` options.

Every case asserts the exit code (1: a bundle fails a check; 2: bad input), that the message
names the problem, that no traceback and no advice to load pickles reached the user, and that
nothing in the working folder changed (no output written, half or whole, and nothing else
touched). Each case runs in its own copy of a workspace holding a compiled demo graph `g`, its
inputs `x.npy`, weights `w.npz` and a bundle `b`.
"""
import hashlib
import io
import json
import os
import pickle
import re
import shutil
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from forgery import read_values, rewrite_tensor

from wageubn_sim.cli import main
from wageubn_sim.demo import DEMO_DATA, images_to_input

MODEL = "wageubn_sim.demo:demo_model"
UNSAFE_ADVICE = ("allow_pickle", "weights_only=False")


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("pristine")
    shutil.copy(DEMO_DATA, root / "w.npz")
    with np.load(DEMO_DATA) as data:
        np.save(root / "x.npy", images_to_input(data["test_images"][:2]))
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert cli("compile", MODEL, "--weights", "w.npz", "--input", "x.npy", "-o", "g").exit_code == 0
        assert cli("vectors", "g", "--input", "x.npy", "-o", "b").exit_code == 0
    finally:
        os.chdir(cwd)
    return root


@pytest.fixture
def ws(pristine, tmp_path, monkeypatch):
    work = tmp_path / "ws"
    shutil.copytree(pristine, work, symlinks=True)
    monkeypatch.chdir(work)
    return work


BIG_FILE = 1 << 26  # a planted huge (sparse) file: its size, time and ends, not 2 GB of hashing


def _file_digest(path: Path, size: int) -> str:
    if size <= BIG_FILE:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    with open(path, "rb") as fh:  # any write changes the size or the time; the ends catch an edit in place
        head = fh.read(1 << 20)
        fh.seek(size - (1 << 20))
        return f"{size}:{os.stat(path).st_mtime_ns}:" + hashlib.sha256(head + fh.read()).hexdigest()


def snapshot(root: Path) -> dict:
    """Every entry below root: its kind, and a file's bytes' sha256 (a huge file's size, time
    and ends)."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            rel = path.relative_to(root).as_posix()
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                out[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(mode):
                out[rel] = ("dir",)
            elif stat.S_ISREG(mode):
                out[rel] = ("file", _file_digest(path, os.lstat(path).st_size))
            else:
                out[rel] = ("other", stat.S_IFMT(mode))
    return out


@dataclass
class Case:
    kind: str
    name: str
    setup: object  # ws -> None: plants the hostile input
    args: tuple
    code: int
    message: str  # a regex the output must contain

    def __str__(self):
        return f"{self.kind}-{self.name}"


# ---- helpers that plant hostile files -----------------------------------------------------

def edit_json(rel, fn):
    def setup(ws):
        data = json.loads((ws / rel).read_text())
        fn(data)
        (ws / rel).write_text(json.dumps(data))
    return setup


def edit_graph(fn):
    return edit_json("g/graph.json", fn)


def node(data, name):
    return next(n for n in data["nodes"] if n["name"] == name)


def set_param(name, key, value):
    return edit_graph(lambda d: node(d, name)["params"].__setitem__(key, value))


def edit_arrays(fn):
    def setup(ws):
        with np.load(ws / "g" / "arrays.npz") as npz:
            arrays = {k: npz[k] for k in npz.files}
        fn(arrays)
        np.savez(ws / "g" / "arrays.npz", **arrays)
    return setup


def write_bytes(rel, data: bytes):
    def setup(ws):
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        (ws / rel).write_bytes(data)
    return setup


def save_npy(rel, array, **kw):
    def setup(ws):
        np.save(ws / rel, array, **kw)
    return setup


def npy_header(shape, descr="<f8"):
    """An .npy header declaring ``shape``, with no data after it."""
    buf = io.BytesIO()  # the writer puts the magic string first itself
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def zip_bomb(rel, member="a.npy", claimed=0xFFFFFF00):
    """A zip whose member claims ``claimed`` bytes but holds a few (a forged size field)."""
    def setup(ws):
        body = npy_header((8,)) + bytes(64)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(member, body)
        data = bytearray(buf.getvalue())
        for sig, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # local and central headers
            at = data.find(sig)
            data[at + offset:at + offset + 4] = claimed.to_bytes(4, "little")
        (ws / rel).write_bytes(bytes(data))
    return setup


def mkfifo(rel):
    def setup(ws):
        (ws / rel).unlink(missing_ok=True)
        os.mkfifo(ws / rel)
    return setup


def both(*setups):
    def setup(ws):
        for s in setups:
            s(ws)
    return setup


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


# ---- the bundle's forgeries -----------------------------------------------------------------

def manifest_edit(fn):
    return edit_json("b/manifest.json", fn)


def remove_last_layer_after_rewriting_its_output(ws):
    """The issue's attack: the final output rewritten in all its files, sha256 updated, and
    its layer entry deleted, so that nothing would recompute it."""
    root = ws / "b"
    manifest = json.loads((root / "manifest.json").read_text())
    last = manifest["layers"][-1]
    tid = last["tensors"]["output"]
    rewrite_tensor(root, tid, read_values(root, tid) + 1, manifest)
    manifest["layers"].pop()
    (root / "manifest.json").write_text(json.dumps(manifest))


def flip_mem_word(ws):
    """One word of one .mem file changed, sha256 left: only that file is to blame."""
    path = ws / "b" / "8" / "output.mem"
    lines = path.read_text().splitlines()
    lines[-1] = format(int(lines[-1], 16) ^ 1, f"0{len(lines[-1])}x")
    path.write_text("\n".join(lines) + "\n")


def forge_mem_only(ws):
    """One .mem file rewritten with a changed value and its sha256 updated: the .coe, .mif and
    .npy beside it still agree with the recomputation, so only the .mem is blamed."""
    root = ws / "b"
    manifest = json.loads((root / "manifest.json").read_text())
    entry = manifest["tensors"]["3.relu1/output"]
    mem_file = next(f for f in entry["files"] if f["kind"] == "mem")
    path = root / mem_file["path"]
    lines = path.read_text().splitlines()
    lines[3] = format(int(lines[3], 16) ^ 2, f"0{len(lines[3])}x")
    path.write_text("\n".join(lines) + "\n")
    mem_file["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (root / "manifest.json").write_text(json.dumps(manifest))


def forge_all_files(tid, delta=1):
    def setup(ws):
        root = ws / "b"
        rewrite_tensor(root, tid, read_values(root, tid) + delta)
    return setup


def rehash(rel, text_fn):
    """Rewrite a bundle file's text and update its sha256 (so that only its parse can tell)."""
    def setup(ws):
        root = ws / "b"
        manifest = json.loads((root / "manifest.json").read_text())
        path = root / rel
        path.write_text(text_fn(path.read_text()))
        for entry in manifest["tensors"].values():
            for f in entry["files"]:
                if f["path"] == rel:
                    f["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        (root / "manifest.json").write_text(json.dumps(manifest))
    return setup


def rehash_bytes(rel, data: bytes):
    def setup(ws):
        root = ws / "b"
        manifest = json.loads((root / "manifest.json").read_text())
        (root / rel).write_bytes(data)
        for entry in manifest["tensors"].values():
            for f in entry["files"]:
                if f["path"] == rel:
                    f["sha256"] = hashlib.sha256(data).hexdigest()
        (root / "manifest.json").write_text(json.dumps(manifest))
    return setup


def mif_huge_range(text):
    head = text[:text.index("CONTENT BEGIN")]
    return head + "CONTENT BEGIN\n[0..fffffff] : 0;\nEND;\n"


def gap_in_chain(d):
    """The last layer reads a tensor that no earlier layer produces."""
    d["layers"][-1]["tensors"]["inputs"] = ["8/output"]


def manifest_symlink(ws):
    outside = ws / "elsewhere.json"
    shutil.copy(ws / "b" / "manifest.json", outside)
    (ws / "b" / "manifest.json").unlink()
    os.symlink(outside, ws / "b" / "manifest.json")


def deep_json(depth=100_000):
    return ("[" * depth + "]" * depth).encode()


def sparse_file(rel, size):
    def setup(ws):
        with open(ws / rel, "wb") as fh:
            fh.truncate(size)
    return setup


def torch_save(rel, obj):
    def setup(ws):
        import torch
        torch.save(obj, ws / rel)
    return setup


def demo_state():
    import torch
    with np.load(DEMO_DATA) as data:
        return {k[6:]: torch.from_numpy(data[k]) for k in data.files if k.startswith("state/")}


def state_with(fn):
    def build(ws):
        import torch
        state = demo_state()
        fn(state)
        torch.save(state, ws / "w.pt")
    return build


def evil_pickle(ws):
    (ws / "evil.pt").write_bytes(pickle.dumps(_Evil()))


# ---- the cases ----------------------------------------------------------------------------

SIM = ("simulate", "g", "--input", "x.npy", "-o", "y.npy")
ONNX = ("compile", "m.onnx", "-o", "g2")
BREVITAS_CNN = Path(__file__).parent / "data" / "brevitas" / "cnn.onnx"


def onnx_model(edit):
    """m.onnx: the Brevitas fixture's bytes, edited."""
    return write_bytes("m.onnx", edit(BREVITAS_CNN.read_bytes()))


def onnx_external(location, fifo=False):
    """m.onnx with its weights in an external file at ``location`` (as written in the model)."""
    def setup(ws):
        import onnx
        model = onnx.load(BREVITAS_CNN)
        onnx.save(model, ws / "m.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
                  location="m.data", size_threshold=0)
        model = onnx.load(ws / "m.onnx", load_external_data=False)
        for tensor in model.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = location
        onnx.save(model, ws / "m.onnx")
        (ws / "m.data").unlink()
        if fifo:
            os.mkfifo(ws / location)
    return setup
VERIFY = ("verify", "b")
COMPILE = ("compile", MODEL, "--weights", "w.npz", "--input", "x.npy", "-o", "g2")
NOTHING = lambda ws: None  # noqa: E731

CASES = [
    # graph files
    Case("graph", "no-folder", NOTHING, ("simulate", "nograph", "--random", 1, "-o", "y.npy"), 2, "not a graph folder"),
    Case("graph", "json-syntax", write_bytes("g/graph.json", b'{"format": '), SIM, 2, "graph.json is not valid JSON"),
    Case("graph", "json-deep", write_bytes("g/graph.json", deep_json()), SIM, 2, "nests its JSON too deeply"),
    Case("graph", "harmless-edit", edit_graph(lambda d: d["meta"].update(x=1)), SIM, 0, "wrote y.npy"),  # the control
    Case("graph", "json-nan-literal", lambda ws: (ws / "g/graph.json").write_text(
        (ws / "g/graph.json").read_text().replace('"frac_bits": 7', '"frac_bits": NaN', 1)), SIM, 2, "NaN is not a JSON number"),
    Case("graph", "json-huge", sparse_file("g/graph.json", 200 << 20), SIM, 2, "more than the .* such a file can need"),
    Case("graph", "json-fifo", mkfifo("g/graph.json"), SIM, 2, "graph.json is not a regular file"),
    Case("graph", "json-folder", lambda ws: ((ws / "g/graph.json").unlink(), (ws / "g/graph.json").mkdir()), SIM, 2,
         "not a regular file"),
    Case("graph", "version", edit_graph(lambda d: d.update(version=9)), SIM, 2, "not a wageubn-sim graph of a version this tool reads"),
    Case("graph", "param-missing", edit_graph(lambda d: node(d, "0")["params"].pop("stride")), SIM, 2,
         r"parameters \['stride'\] are missing"),
    Case("graph", "param-unknown", set_param("0", "bogus", 1), SIM, 2, r"unknown parameters \['bogus'\]"),
    Case("graph", "stride-zero", set_param("0", "stride", [0, 1]), SIM, 2, r"stride=\(0, 1\) must be a pair of ints, each at least 1"),
    Case("graph", "padding-negative", set_param("0", "padding", [-1, 1]), SIM, 2, "padding=.* at least 0"),
    Case("graph", "dilation-zero", set_param("3.conv1", "dilation", [1, 0]), SIM, 2, "dilation=.* at least 1"),
    Case("graph", "stride-float", set_param("0", "stride", [1.5, 1]), SIM, 2, "stride=.* must be a pair of ints"),
    Case("graph", "groups-bool", set_param("0", "groups", True), SIM, 2, "groups=True is not of type"),
    Case("graph", "op-unknown", edit_graph(lambda d: node(d, "2").update(op="gelu")), SIM, 2, "unknown op 'gelu'"),
    Case("graph", "weight-fraction", edit_arrays(lambda a: a.update({"0/weight": a["0/weight"] + 0.25})), SIM, 2,
         "holds float64 values, not integers"),
    Case("graph", "weight-bool", edit_arrays(lambda a: a.update({"0/weight": a["0/weight"] > 0})), SIM, 2,
         "holds bool values, not integers"),
    Case("graph", "weight-complex", edit_arrays(lambda a: a.update({"0/weight": a["0/weight"] + 1j})), SIM, 2,
         "complex128 values, not integers"),
    Case("graph", "weight-pickle", edit_arrays(lambda a: a.update({"0/weight": np.array([_Evil()], dtype=object)})), SIM, 2,
         "Python objects .* never loads pickled objects"),
    Case("graph", "weight-shape", edit_arrays(lambda a: a.update({"3.conv1/weight": a["3.conv1/weight"][:, :4]})), SIM, 2,
         "input has 8 channels, weights .* need 4"),
    Case("graph", "weight-outside-format", edit_arrays(lambda a: a.update({"0/weight": a["0/weight"] * 100})), SIM, 2,
         "outside its format s8.7"),
    Case("graph", "out-shape", edit_graph(lambda d: node(d, "4").update(out_shape=[8, 3, 3])), SIM, 2,
         r"recorded out_shape \[8, 3, 3\], but its input and weights give \[8, 4, 4\]"),
    Case("graph", "out-format", edit_graph(lambda d: node(d, "2")["out_format"].update(frac_bits=3)), SIM, 2,
         "recorded out_format sinf.3, but its params give sinf.7"),
    Case("graph", "out-shape-zero", edit_graph(lambda d: node(d, "4").update(out_shape=[8, 0, 4])), SIM, 2,
         "must be a list of positive ints"),
    Case("graph", "npz-bomb", zip_bomb("g/arrays.npz", "0/weight.npy"), SIM, 2, "a forged archive"),
    Case("graph", "npz-huge-header", lambda ws: _npz_with(ws, "0/weight", npy_header((1 << 40,), "<i8")), SIM, 2,
         "truncated or padded"),
    Case("graph", "npz-not-zip", write_bytes("g/arrays.npz", b"not a zip at all"), SIM, 2, "is not an .npz archive"),
    Case("graph", "npz-member-missing", edit_arrays(lambda a: a.pop("8/bias")), SIM, 2, "has no array '8/bias'"),
    Case("graph", "stochastic", set_param("2", "rounding", "STOCHASTIC"), SIM, 2,
         "rounding is STOCHASTIC, but the forward engine draws no random words"),
    Case("graph", "bias-vs-accumulator", set_param("8", "accumulator", {
        "bits": 12, "overflow": "SAT", "mac_order": "channel_major", "k_split": 1}), SIM, 2,
         "outside the 12-bit saturating accumulator it preloads"),
    Case("graph", "reads-later-node", edit_graph(lambda d: node(d, "2").update(inputs=["8"])), SIM, 2,
         "node 2 reads \\['8'\\] before they are computed"),
    Case("graph", "outputs-unknown", edit_graph(lambda d: d.update(outputs=["nowhere"])), SIM, 2,
         "outputs .*nowhere.* must name computed values"),
    Case("graph", "conv-padding-huge", set_param("0", "padding", [2**40, 1]), SIM, 2,
         "an output plane of .* positions is beyond the engine's"),
    Case("graph", "pool-padding-huge", set_param("4", "padding", [0, 2**30]), SIM, 2,
         "pooling: an output plane of .* positions is beyond"),
    Case("graph", "format-63-bits", set_param("0", "weight_fmt", {"bits": 63, "frac_bits": 7, "signed": True}),
         SIM, 2, "a signed format needs 2 to 62 bits"),
    Case("graph", "format-unsigned-62", set_param("0", "weight_fmt", {"bits": 62, "frac_bits": 7, "signed": False}),
         SIM, 2, "an? unsigned format needs 1 to 61 bits"),
    Case("graph", "format-key-missing", set_param("0", "weight_fmt", {"bits": 8, "frac_bits": 7}), SIM, 2,
         "a format is"),
    Case("graph", "accumulator-k-split", set_param("0", "accumulator", {
        "bits": None, "overflow": "SAT", "mac_order": "channel_major", "k_split": 0}), SIM, 2, "k_split=0"),
    Case("graph", "add-one-input", edit_graph(lambda d: node(d, "3.add")["inputs"].pop()), SIM, 2,
         "reads 1 inputs, its op takes 2"),
    Case("graph", "pool-all-padding", set_param("4", "padding", [3, 3]), SIM, 2, "lies entirely in the padding"),
    Case("graph", "array-unneeded", edit_graph(lambda d: node(d, "0")["arrays"].append("bias")), SIM, 2,
         "has no array '0/bias'|holds arrays"),
    Case("graph", "tail-not-object", edit_graph(lambda d: d["meta"].update(float_tail=[1])), SIM, 2,
         "float tail: an object of unit, offset, ops and names expected"),
    Case("graph", "tail-bad-op", edit_graph(lambda d: d["meta"].update(float_tail={
        "unit": ["0x1p-4"], "offset": ["0x0p+0"], "names": [], "ops": [{"op": "Exp", "operand": ["0x1p+0"]}]})),
        SIM, 2, "float tail: op 'Exp' is not one of"),
    Case("graph", "tail-not-float32", edit_graph(lambda d: d["meta"].update(float_tail={
        "unit": ["0x1p-4"], "offset": ["0x0p+0"], "names": [], "ops": [{"op": "Mul", "operand": ["0x1.0000000000001p+0"]}]})),
        SIM, 2, "Mul's operand must be finite float32 values"),
    Case("graph", "tail-inf-unit", edit_graph(lambda d: d["meta"].update(float_tail={
        "unit": ["inf"], "offset": ["0x0p+0"], "names": [], "ops": []})), SIM, 2, "unit must be finite"),

    # inputs
    Case("input", "missing", NOTHING, ("simulate", "g", "--input", "none.npy", "-o", "y.npy"), 2, "none.npy does not exist"),
    Case("input", "truncated", lambda ws: (ws / "t.npy").write_bytes((ws / "x.npy").read_bytes()[:-8]),
         ("simulate", "g", "--input", "t.npy", "-o", "y.npy"), 2, "truncated or padded"),
    Case("input", "huge-header", write_bytes("h.npy", npy_header((1 << 20, 1, 1 << 20))),
         ("simulate", "g", "--input", "h.npy", "-o", "y.npy"), 2, "declares .* but holds 0 bytes"),
    Case("input", "pickle", lambda ws: np.save(ws / "p.npy", np.array([_Evil()], dtype=object), allow_pickle=True),
         ("simulate", "g", "--input", "p.npy", "-o", "y.npy"), 2, "Python objects"),
    Case("input", "complex", save_npy("c.npy", np.zeros((1, 1, 8, 8), complex)),
         ("simulate", "g", "--input", "c.npy", "-o", "y.npy"), 2, "complex128 values, not integers or floats"),
    Case("input", "bool", save_npy("c.npy", np.zeros((1, 1, 8, 8), bool)),
         ("simulate", "g", "--input", "c.npy", "-o", "y.npy"), 2, "bool values"),
    Case("input", "strings", save_npy("c.npy", np.full((1, 1, 8, 8), "a")),
         ("simulate", "g", "--input", "c.npy", "-o", "y.npy"), 2, "<U1 values"),
    Case("input", "longdouble", save_npy("c.npy", np.zeros((1, 1, 8, 8), np.longdouble)),
         ("simulate", "g", "--input", "c.npy", "-o", "y.npy"), 2, "wider than float64"),
    Case("input", "uint64-max", save_npy("u.npy", np.full((1, 1, 8, 8), 2**64 - 1, np.uint64)),
         ("simulate", "g", "--input", "u.npy", "-o", "y.npy"), 2, "18446744073709551615 lies outside the input format s16.8"),
    Case("input", "int-outside-format", save_npy("i.npy", np.full((1, 1, 8, 8), 2**15, np.int32)),
         ("simulate", "g", "--input", "i.npy", "-o", "y.npy"), 2, "outside the input format s16.8"),
    Case("input", "nan", save_npy("n.npy", np.full((1, 1, 8, 8), np.nan)),
         ("simulate", "g", "--input", "n.npy", "-o", "y.npy"), 2, "cannot quantize NaN or Inf"),
    Case("input", "wrong-shape", save_npy("s.npy", np.zeros((1, 3, 8, 8))),
         ("simulate", "g", "--input", "s.npy", "-o", "y.npy"), 2, r"input shape \(1, 3, 8, 8\) does not fit"),
    Case("input", "npz-two-arrays", lambda ws: np.savez(ws / "two.npz", a=np.zeros(1), b=np.zeros(1)),
         ("simulate", "g", "--input", "two.npz", "-o", "y.npy"), 2, "exactly one array"),
    Case("input", "npz-bomb", zip_bomb("bomb.npz"), ("simulate", "g", "--input", "bomb.npz", "-o", "y.npy"), 2,
         "a forged archive"),
    Case("input", "not-npy", write_bytes("r.npy", os.urandom(200)), ("simulate", "g", "--input", "r.npy", "-o", "y.npy"),
         2, "is not an .npy array file"),
    Case("input", "fifo", mkfifo("f.npy"), ("simulate", "g", "--input", "f.npy", "-o", "y.npy"), 2, "not a regular file"),
    Case("input", "random-zero", NOTHING, ("simulate", "g", "--random", 0, "-o", "y.npy"), 2, "0 is not in the range"),
    Case("input", "random-huge", NOTHING, ("simulate", "g", "--random", 10**9, "-o", "y.npy"), 2,
         "asks for 64000000000 values, more than"),
    Case("input", "shape-zero", NOTHING, ("compile", MODEL, "--random", 1, "--shape", "1,0,8", "-o", "g2"), 2,
         "every size must be at least 1"),
    Case("input", "shape-words", NOTHING, ("compile", MODEL, "--random", 1, "--shape", "a,b", "-o", "g2"), 2,
         "write it as C,H,W"),
    Case("input", "seed-negative", NOTHING, ("simulate", "g", "--random", 1, "--seed", -1, "-o", "y.npy"), 2,
         "-1 is not in the range"),
    Case("input", "format-syntax", NOTHING, ("compile", MODEL, "--random", 1, "--shape", "1,8,8", "--input-format", "q16",
                                             "-o", "g2"), 2, "--input-format 'q16'.*write it as"),
    Case("input", "format-wide", NOTHING, ("compile", MODEL, "--random", 1, "--shape", "1,8,8", "--input-format", "s70.8",
                                           "-o", "g2"), 2, "needs 2 to 62 bits"),
    Case("input", "subnormal", save_npy("tiny.npy", np.full((1, 1, 8, 8), 1e-300)),
         ("compile", MODEL, "--input", "tiny.npy", "--input-format", "s16.-40", "-o", "g2"), 2,
         "below float64's normal range"),
    Case("input", "accumulator-junk", NOTHING, ("compile", MODEL, "--random", 1, "--shape", "1,8,8", "--accumulator",
                                                "16:SAT:kernel_major:2:junk", "-o", "g2"), 2, "too many fields"),

    # weights and models
    Case("weights", "missing", NOTHING, ("compile", MODEL, "--weights", "none.pt", "--input", "x.npy", "-o", "g2"), 2,
         "weights file none.pt does not exist"),
    Case("weights", "pt-garbage", write_bytes("w.pt", os.urandom(300)),
         ("compile", MODEL, "--weights", "w.pt", "--input", "x.npy", "-o", "g2"), 2,
         "is not a state dict that torch.load\\(weights_only=True\\) reads"),
    Case("weights", "pt-evil-pickle", evil_pickle, ("compile", MODEL, "--weights", "evil.pt", "--input", "x.npy", "-o", "g2"),
         2, "is not a state dict"),
    Case("weights", "pt-list", torch_save("w.pt", [1, 2, 3]), ("compile", MODEL, "--weights", "w.pt", "--input", "x.npy",
                                                               "-o", "g2"), 2, "holds list, not a state dict of tensors"),
    Case("weights", "pt-checkpoint", torch_save("w.pt", {"model": {}, "epoch": 3}),
         ("compile", MODEL, "--weights", "w.pt", "--input", "x.npy", "-o", "g2"), 2, "holds a dict with keys"),
    Case("weights", "pt-wrong-shape", state_with(lambda s: s.update({"0.weight": s["0.weight"][:4]})),
         ("compile", MODEL, "--weights", "w.pt", "--input", "x.npy", "-o", "g2"), 2, "do not fit .*size mismatch"),
    Case("weights", "pt-nan", state_with(lambda s: s["0.weight"].view(-1).__setitem__(0, float("nan"))),
         ("compile", MODEL, "--weights", "w.pt", "--input", "x.npy", "-o", "g2"), 2, "weight holds NaN or Inf"),
    Case("weights", "pt-complex", state_with(lambda s: s.update({"0.weight": s["0.weight"] * (1 + 1j)})),
         ("compile", MODEL, "--weights", "w.pt", "--input", "x.npy", "-o", "g2"), 2, "0.weight is complex"),
    Case("weights", "npz-pickle", lambda ws: np.savez(ws / "p.npz", **{"state/0.weight": np.array([_Evil()], dtype=object)}),
         ("compile", MODEL, "--weights", "p.npz", "--input", "x.npy", "-o", "g2"), 2, "Python objects"),
    Case("weights", "npz-missing-keys", lambda ws: np.savez(ws / "e.npz", **{"state/0.weight": np.zeros((8, 1, 3, 3))}),
         ("compile", MODEL, "--weights", "e.npz", "--input", "x.npy", "-o", "g2"), 2, "do not fit .* missing"),
    Case("weights", "model-no-colon", NOTHING, ("compile", "wageubn_sim.demo", "--random", 1, "--shape", "1,8,8", "-o", "g2"),
         2, "name it as package.module:factory"),
    Case("weights", "model-no-module", NOTHING, ("compile", "no_such_pkg.mod:f", "--random", 1, "--shape", "1,8,8",
                                                 "-o", "g2"), 2, "does not import: ModuleNotFoundError"),
    Case("weights", "model-factory-fails", NOTHING, ("compile", "wageubn_sim.demo:images_to_input", "--random", 1,
                                                     "--shape", "1,8,8", "-o", "g2"), 2, "failed: TypeError"),
    Case("weights", "model-not-module", NOTHING, ("compile", "wageubn_sim.demo:load_demo_model", "--random", 1,
                                                  "--shape", "1,8,8", "-o", "g2"), 2, "returned tuple, not a torch.nn.Module"),
    Case("weights", "model-not-callable", NOTHING, ("compile", "wageubn_sim.demo:DEMO_DATA", "--random", 1,
                                                    "--shape", "1,8,8", "-o", "g2"), 2, "not a factory to call"),

    # bundles (tampering fails the check: exit 1; what is no bundle: exit 2)
    Case("bundle", "no-folder", NOTHING, ("verify", "nothing"), 2, "nothing is not a folder"),
    Case("bundle", "no-manifest", NOTHING, ("verify", "g"), 2, "has no manifest.json"),
    Case("bundle", "version", manifest_edit(lambda d: d.update(version=7)), VERIFY, 2, "manifest version 7; this tool reads"),
    Case("bundle", "other-schema", manifest_edit(lambda d: d.update(schema="other")), VERIFY, 2,
         "not a wageubn-sim vector bundle manifest"),
    Case("bundle", "layer-removed", remove_last_layer_after_rewriting_its_output, VERIFY, 1,
         r"declared output 8/output is not produced[\s\S]*tensor 8/output .*belongs to no listed layer"),
    Case("bundle", "layers-empty", manifest_edit(lambda d: d.update(layers=[])), VERIFY, 1, "lists no layers"),
    Case("bundle", "events-edited", manifest_edit(lambda d: d["layers"][0]["events"].update(ties=99)), VERIFY, 1,
         r"layer 0 \(conv2d\): events .*'ties': 99.*the recomputation counts"),
    Case("bundle", "register-events-edited", manifest_edit(
        lambda d: d["layers"][2]["register_events"]["output"].update(underflows=5)), VERIFY, 1, "register_events"),
    Case("bundle", "extra-file", write_bytes("b/0/extra.hex", b"00\n"), VERIFY, 1, "0/extra.hex is not listed"),
    Case("bundle", "manifest-symlink", manifest_symlink, VERIFY, 1, "manifest.json is a symbolic link"),
    Case("bundle", "flipped-mem-word", flip_mem_word, VERIFY, 1, r"^.*\n  8/output.mem: sha256 does not match"),
    Case("bundle", "forged-mem-only", forge_mem_only, VERIFY, 1, r"1 FAILED\n  3.relu1/output.mem: 1 values differ"),
    Case("bundle", "forged-output", forge_all_files("3.conv2/output"), VERIFY, 1,
         r"4 FAILED\n  3.conv2/output.coe: 1024 values differ from the recomputation"),  # that tensor alone
    Case("bundle", "manifest-syntax", write_bytes("b/manifest.json", b"{"), VERIFY, 1, "manifest .* is not valid JSON"),
    Case("bundle", "manifest-deep", write_bytes("b/manifest.json", deep_json()), VERIFY, 1, "nests its JSON too deeply"),
    Case("bundle", "mif-huge-range", rehash("0/output.mif", mif_huge_range), VERIFY, 1,
         "0/output.mif: line .*: address fffffff is beyond"),
    Case("bundle", "mem-with-address", rehash("0/weight.mem", lambda t: t + "@fffffff\n01\n"), VERIFY, 1,
         "0/weight.mem: line 73: '@fffffff' is not a word of exactly 2 hex digits .*UG901"),
    Case("bundle", "mem-with-comment", rehash("0/weight.mem", lambda t: "// made by hand\n" + t), VERIFY, 1,
         "0/weight.mem: line 1: '// made by hand' is not a word"),
    Case("bundle", "crc-edited", manifest_edit(lambda d: d["tensors"]["0/weight"].update(crc32="00000000")), VERIFY, 1,
         "tensor 0/weight: crc32 00000000 in the manifest, its values give"),
    Case("bundle", "fill-word-edited", rehash("0/weight.coe", lambda t: t), VERIFY, 0, "all match"),  # control
    Case("bundle", "npy-huge-header", rehash_bytes("0/weight.npy", npy_header((8, 1, 3, 3), "<i8")), VERIFY, 1,
         "0/weight.npy declares .* but holds 0 bytes"),
    Case("bundle", "coe-negative", rehash("0/weight.coe", lambda t: t.replace("radix=16", "radix=10").replace(
        "memory_initialization_vector=\n", "memory_initialization_vector=\n-1,\n", 1)), VERIFY, 1, "0/weight.coe: line"),
    Case("bundle", "file-listed-twice", manifest_edit(lambda d: d["tensors"]["0/weight"]["files"].__setitem__(
        0, dict(d["tensors"]["0/output"]["files"][0]))), VERIFY, 1, "listed twice"),
    Case("bundle", "path-escapes", manifest_edit(lambda d: d["tensors"]["0/weight"]["files"][0].update(
        path="0/../../x.npy")), VERIFY, 1, "escapes the bundle folder"),
    Case("bundle", "file-missing", lambda ws: (ws / "b/3.bn1/gamma.mif").unlink(), VERIFY, 1,
         "3.bn1/gamma.mif is missing"),
    Case("bundle", "file-is-folder", lambda ws: ((ws / "b/3.bn1/gamma.mif").unlink(), (ws / "b/3.bn1/gamma.mif").mkdir()),
         VERIFY, 1, "3.bn1/gamma.mif is not a regular file"),
    Case("bundle", "subfolder-symlink", lambda ws: os.symlink(ws / "g", ws / "b" / "escape"), VERIFY, 1,
         "escape is a symbolic link"),
    Case("bundle", "weight-format-edited", manifest_edit(lambda d: d["tensors"]["0/weight"]["format"].update(frac_bits=6)),
         VERIFY, 1, "tensor 0/weight: format s8.6, the layer's params say s8.7"),
    Case("bundle", "gap-in-chain", manifest_edit(gap_in_chain), VERIFY, 1,
         "layer 8 .* reads 8/output, which neither the input nor an earlier"),
    Case("bundle", "schema-violation", manifest_edit(lambda d: d["tensors"]["0/weight"].update(width="8")), VERIFY, 1,
         "manifest.json at tensors/0/weight/width: '8' is not of type 'integer'"),
    Case("bundle", "forged-weight-with-graph", forge_all_files("3.conv1/weight"), ("verify", "b", "--graph", "g"), 1,
         r"4 FAILED\n  3.conv1/weight.coe: 576 values differ from the graph's weight of 3.conv1"),

    # outputs
    Case("output", "dot", NOTHING, ("simulate", "g", "--random", 1, "-o", ".", "--force"), 2, "names no new file or folder"),
    Case("output", "dotdot", NOTHING, ("vectors", "g", "--random", 1, "-o", "..", "--force"), 2, "names no new file or folder"),
    Case("output", "holds-cwd", NOTHING, ("vectors", "g", "--random", 1, "-o", "../ws", "--force"), 2,
         "is the current folder or holds it"),
    Case("output", "parent-is-file", NOTHING, ("vectors", "g", "--random", 1, "-o", "x.npy/sub"), 2,
         "a parent of the path is a file"),
    Case("output", "exists", NOTHING, ("vectors", "g", "--random", 1, "-o", "b"), 2, "b exists; pass .*--force"),
    Case("output", "replaces-input", NOTHING, ("simulate", "g", "--input", "x.npy", "-o", "x.npy", "--force"), 2,
         "would replace the input x.npy"),
    Case("output", "replaces-graph", NOTHING, ("vectors", "g", "--random", 1, "-o", "g", "--force"), 2,
         "would replace the input g"),
    Case("output", "file-by-folder", NOTHING, ("vectors", "g", "--random", 1, "-o", "x.npy", "--force"), 2,
         "x.npy is a file and the output is a folder"),
    Case("output", "compile-refuses-first", NOTHING, ("compile", "no_such_pkg:f", "--random", 1, "-o", "g"), 2,
         "g exists"),
    Case("output", "audit-refuses-first", NOTHING, ("audit", "nograph", "--random", 1, "-o", "b"), 2, "b exists"),

    # QONNX models (tests/test_qonnx.py has the refusals of their contents)
    Case("onnx", "truncated", onnx_model(lambda data: data[: len(data) // 3]), ONNX, 2,
         "m.onnx is not a readable ONNX file"),
    Case("onnx", "garbage", write_bytes("m.onnx", b"\x08\x07" + b"\xff" * 64), ONNX, 2, "not a readable ONNX file"),
    Case("onnx", "fifo", mkfifo("m.onnx"), ONNX, 2, "m.onnx is not a regular file"),
    Case("onnx", "huge", sparse_file("m.onnx", (2 << 30) + 1), ONNX, 2, "more than the .* such a file can need"),
    Case("onnx", "external-data-escapes", onnx_external("../w.npz"), ONNX, 2,
         "external data location '../w.npz' is not a file name beside the model"),
    Case("onnx", "external-data-absolute", onnx_external("/etc/passwd"), ONNX, 2, "is not a file name beside"),
    Case("onnx", "external-data-missing", onnx_external("gone.data"), ONNX, 2, "gone.data does not exist"),
    Case("onnx", "external-data-fifo", onnx_external("pipe.data", fifo=True), ONNX, 2, "pipe.data is not a regular file"),
    Case("onnx", "weights-given", onnx_model(lambda data: data), ONNX + ("--weights", "w.npz"), 2,
         "holds its own weights; leave --weights out"),
    Case("onnx", "input-format-disagrees", onnx_model(lambda data: data), ONNX + ("--input-format", "s16.8"), 2,
         "disagrees with the model's input Quant"),
    Case("onnx", "control", onnx_model(lambda data: data), ONNX, 0, "wrote g2: 5 nodes"),
    # train options
    Case("train", "lr-nan", NOTHING, ("train", "--lr", "nan"), 2, "--lr nan: a learning rate must be a finite number"),
    Case("train", "lr-negative", NOTHING, ("train", "--lr", -0.5), 2, "--lr -0.5: a learning rate must be"),
    Case("train", "lr-inf", NOTHING, ("train", "--lr", "inf"), 2, "--lr inf"),
    Case("train", "lr-rounds-to-zero", NOTHING, ("train", "--lr", 0.0001), 2, "rounds to 0 on flr's grid 2\\*\\*-9"),
    Case("train", "float-lr-nan", NOTHING, ("train", "--float-lr", "nan"), 2, "--float-lr nan"),
    Case("train", "float-lr-zero", NOTHING, ("train", "--float-lr", 0), 2, "--float-lr 0.0"),
    Case("train", "batch-beyond-data", NOTHING, ("train", "--batch", 5000), 2, "--batch 5000 is larger than the 1437"),
    Case("train", "batch-beyond-limit", NOTHING, ("train", "--limit", 10, "--batch", 32), 2, "larger than the 10 training"),
    Case("train", "epochs-zero", NOTHING, ("train", "--epochs", 0), 2, "0 is not in the range"),
    Case("train", "batch-one", NOTHING, ("train", "--batch", 1), 2, "1 is not in the range"),
    Case("train", "step-vectors-exist", NOTHING, ("train", "--step-vectors", "b"), 2, "b exists"),
]


# ---- the second pass (trust, second pass): places, links, outputs over inputs, duplicates,
# structure before arithmetic, bounds, names, sweep options, ONNX validity, messages ----------

def layer_of(d, name):
    return next(x for x in d["layers"] if x["name"] == name)


def swap_on_disk(ws, a, b):
    """Exchange two files or folders of the bundle on disk."""
    root = ws / "b"
    (root / a).rename(root / "swap.tmp")
    (root / b).rename(root / a)
    (root / "swap.tmp").rename(root / b)


def swap_weights_and_paths(ws):
    """The issue's attack: 3.conv1's and 3.conv2's weight files exchanged on disk and their
    paths exchanged in the manifest, so that every sha256 and value still matches."""
    for ext in ("mem", "coe", "mif", "npy"):
        swap_on_disk(ws, f"3.conv1/weight.{ext}", f"3.conv2/weight.{ext}")
    path = ws / "b" / "manifest.json"
    d = json.loads(path.read_text())
    one, two = d["tensors"]["3.conv1/weight"]["files"], d["tensors"]["3.conv2/weight"]["files"]
    for f1, f2 in zip(one, two):
        f1["path"], f2["path"] = f2["path"], f1["path"]
    path.write_text(json.dumps(d))


def swap_folders(ws):
    """Whole layer folders exchanged, every path in the manifest following its file."""
    swap_on_disk(ws, "3.conv1", "3.conv2")
    path = ws / "b" / "manifest.json"
    d = json.loads(path.read_text())
    for entry in d["tensors"].values():
        for f in entry["files"]:
            head, _, tail = f["path"].partition("/")
            f["path"] = {"3.conv1": "3.conv2", "3.conv2": "3.conv1"}.get(head, head) + "/" + tail
    path.write_text(json.dumps(d))


def move_output_file(ws):
    """3.conv1's output .npy moved into 3.bn1's folder, its path updated."""
    (ws / "b/3.conv1/output.npy").rename(ws / "b/3.bn1/conv1-output.npy")
    path = ws / "b" / "manifest.json"
    d = json.loads(path.read_text())
    for f in d["tensors"]["3.conv1/output"]["files"]:
        if f["kind"] == "npy":
            f["path"] = "3.bn1/conv1-output.npy"
    path.write_text(json.dumps(d))


def exchange_mem_and_coe(ws):
    """0/weight.mem and .coe exchange contents; the manifest's kinds and hashes follow them."""
    swap_on_disk(ws, "0/weight.mem", "0/weight.coe")
    path = ws / "b" / "manifest.json"
    d = json.loads(path.read_text())
    files = {f["kind"]: f for f in d["tensors"]["0/weight"]["files"]}
    files["mem"]["kind"], files["coe"]["kind"] = "coe", "mem"
    path.write_text(json.dumps(d))


def duplicate_key(rel, key, first_value):
    """A JSON file with ``key`` written twice at the top level: a forged first copy, then the
    real one (a reader keeping the first reads the forgery)."""
    def setup(ws):
        text = (ws / rel).read_text()
        head = "{" + json.dumps(key) + ": " + json.dumps(first_value) + ", "
        (ws / rel).write_text(head + text.lstrip()[1:])
    return setup


def duplicate_crc(ws):
    """A tensor entry naming crc32 twice, the first forged."""
    path = ws / "b" / "manifest.json"
    text = path.read_text()
    d = json.loads(text)
    real = d["tensors"]["0/weight"]["crc32"]
    needle = f'"crc32": "{real}"'
    assert needle in text or f'"crc32":"{real}"' in text
    path.write_text(text.replace(needle, f'"crc32": "00000000", {needle}', 1))


def link_outside(rel, target):
    """``rel`` in the workspace replaced by a symbolic link to ``target``."""
    def setup(ws):
        (ws / rel).unlink()
        os.symlink(target, ws / rel)
    return setup


def rename_node(old, new):
    """A node renamed in graph.json and in arrays.npz (and in the reads of its readers)."""
    def setup(ws):
        data = json.loads((ws / "g/graph.json").read_text())
        for n in data["nodes"]:
            if n["name"] == old:
                n["name"] = new
            n["inputs"] = [new if i == old else i for i in n["inputs"]]
        data["outputs"] = [new if o == old else o for o in data["outputs"]]
        (ws / "g/graph.json").write_text(json.dumps(data))
        with np.load(ws / "g" / "arrays.npz") as npz:
            arrays = {(new + k[len(old):] if k.startswith(old + "/") else k): npz[k] for k in npz.files}
        np.savez(ws / "g" / "arrays.npz", **arrays)
    return setup


def onnx_edit(fn, source=BREVITAS_CNN):
    """m.onnx: a Brevitas fixture, changed by fn(model) (it need not stay valid)."""
    def setup(ws):
        import onnx
        model = onnx.load(source)
        fn(model)
        (ws / "m.onnx").write_bytes(model.SerializeToString())
    return setup


FLOAT_CNN = Path(__file__).parent / "data" / "brevitas" / "float_cnn.onnx"


def float_edit(fn):
    """m.onnx: the Brevitas float-scale fixture, changed by fn(model)."""
    return onnx_edit(fn, FLOAT_CNN)


def _set_initializer(model, name, value):
    from onnx import numpy_helper
    tensor = next(t for t in model.graph.initializer if t.name == name)
    tensor.CopyFrom(numpy_helper.from_array(np.full(numpy_helper.to_array(tensor).shape, value, np.float32), name))


def _second_batchnorm(model):
    import onnx
    bn = next(n for n in model.graph.node if n.op_type == "BatchNormalization")
    again = onnx.NodeProto()
    again.CopyFrom(bn)
    again.name, again.input[0], again.output[0] = "bn_again", bn.output[0], "bn_again_out"
    relu = next(n for n in model.graph.node if n.op_type == "Relu" and n.input[0] == bn.output[0])
    relu.input[0] = "bn_again_out"
    model.graph.node.insert(list(model.graph.node).index(bn) + 1, again)


def _float_output(model):
    """The last Quant removed: the network ends in the float output of its Gemm."""
    last = model.graph.node[-1]
    model.graph.output[0].name = last.input[0]
    model.graph.node.remove(last)


def _float_output_clipped(model):
    """The last Quant replaced by a Clip of two bounds: a float output no tail can compute in
    one float32 op."""
    from onnx import helper, numpy_helper
    last = model.graph.node[-1]
    model.graph.initializer.extend([numpy_helper.from_array(np.array(v, np.float32), n)
                                    for n, v in (("lo", -1.0), ("hi", 1.0))])
    model.graph.node.remove(last)
    model.graph.node.append(helper.make_node("Clip", [last.input[0], "lo", "hi"], [last.output[0]], name="clip"))


def _set_opset(model, domain, version):
    for entry in model.opset_import:
        if entry.domain == domain:
            entry.version = version


def _drop_opset(model, domain):
    keep = [o for o in model.opset_import if o.domain != domain]
    del model.opset_import[:]
    model.opset_import.extend(keep)


def _duplicate_initializer(model):
    import onnx
    copy = onnx.TensorProto()
    copy.CopyFrom(model.graph.initializer[0])
    model.graph.initializer.append(copy)


def _second_writer(model):
    import onnx
    node = onnx.NodeProto()
    node.CopyFrom(model.graph.node[3])
    node.name = "again"
    model.graph.node.insert(4, node)


def _huge_input(model):
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_value = dims[3].dim_value = 1 << 20


def _node_name(model, name):
    next(n for n in model.graph.node if n.op_type == "Conv").name = name
    for node in model.graph.node:
        del node.metadata_props[:]  # the name, not the module path, names the layer


def onnx_external_link(target):
    """m.onnx with its weights in w.bin beside it, w.bin a link to ``target``."""
    def setup(ws):
        import onnx
        model = onnx.load(BREVITAS_CNN)
        onnx.save(model, ws / "m.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
                  location="w.bin", size_threshold=0)
        real = Path(target if os.path.isabs(target) else ws / target)
        if not os.path.isabs(target):
            (ws / "w.bin").rename(real)  # the secret is the real data: the link reads it
        else:
            (ws / "w.bin").unlink()
        os.symlink(target, ws / "w.bin")
    return setup


def onnx_in_folder_with_secret(ws):
    """The model in ws/model/, its w.bin a link to ../secret.bin (the weights' real bytes)."""
    import onnx
    (ws / "model").mkdir()
    model = onnx.load(BREVITAS_CNN)
    onnx.save(model, ws / "model" / "m.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="w.bin", size_threshold=0)
    (ws / "model" / "w.bin").rename(ws / "secret.bin")
    os.symlink("../secret.bin", ws / "model" / "w.bin")


def image_folder(ws):
    """An ImageFolder of two 8x8 grey images in one class."""
    from PIL import Image
    (ws / "imgs" / "a").mkdir(parents=True)
    for k in range(2):
        Image.fromarray(np.full((8, 8), 40 * k, np.uint8), "L").save(ws / "imgs" / "a" / f"{k}.png")


def labelled(ws, value):
    np.save(ws / "xs.npy", np.concatenate([np.load(ws / "x.npy")] * 4))
    np.save(ws / "labels.npy", np.full(8, value, np.int64))


SIM2 = ("simulate", "g", "--random", 1, "-o", "y.npy")
SWEEP = ("sweep", "g", "--data", "xs.npy", "-o", "s")
AUDIT_DATA = ("audit", "g", "--data", "x.npy")

CASES += [
    # graph files: names, outputs, links, sizes, op structure
    Case("graph2", "name-nul", rename_node("2", "re\x00lu"), SIM2, 2, "control character"),
    Case("graph2", "name-newline", rename_node("2", "re\nlu"), SIM2, 2, r"control character '\\n'"),
    Case("graph2", "maxpool-edited-to-avg", edit_graph(lambda d: node(d, "4").update(op="avg_pool2d")), SIM2, 2,
         "an average pool needs out_fmt"),
    Case("graph2", "maxpool-with-avg-fields", set_param("4", "count_include_pad", False), SIM2, 2,
         r"a max pool sets \['count_include_pad'\], which only average pooling reads"),
    Case("graph2", "avgpool-count-pad-loads", set_param("6", "count_include_pad", False), SIM2, 0, "wrote y.npy"),
    Case("graph2", "flatten-no-input", edit_graph(lambda d: node(d, "7").update(inputs=[])), SIM2, 2,
         r"node 7 \(flatten\): reads 0 inputs, its op takes 1"),
    Case("graph2", "output-not-last", edit_graph(lambda d: d.update(outputs=["7"])), SIM2, 2,
         r"one output, their last node \(8\)"),
    Case("graph2", "two-outputs", edit_graph(lambda d: d.update(outputs=["7", "8"])), SIM2, 2, "one output"),
    Case("graph2", "json-duplicate-key", duplicate_key("g/graph.json", "nodes", []), SIM2, 2,
         "the key 'nodes' appears twice"),
    Case("graph2", "arrays-link-outside", link_outside("g/arrays.npz", "../w.npz"), SIM2, 2,
         "arrays.npz resolves to .*, outside the folder"),
    Case("graph2", "json-link-outside", both(lambda ws: shutil.copy(ws / "g/graph.json", ws / "gj.json"),
                                             link_outside("g/graph.json", "../gj.json")), SIM2, 2,
         "graph.json resolves to .*, outside the folder"),
    Case("graph2", "input-shape-huge", edit_graph(lambda d: d["inputs"][0].update(shape=[1 << 20, 1 << 20, 1 << 20])),
         SIM2, 2, r"holds 1152921504606846976 values a sample, more than the engine's"),

    # bundles: places, duplicates, structure, sizes
    Case("bundle2", "weights-swapped-between-layers", swap_weights_and_paths, VERIFY, 1,
         "3.conv2/weight.mem: its mem file of tensor 3.conv1/weight lies at 3.conv1/weight.mem"),
    Case("bundle2", "weights-swapped-with-graph", swap_weights_and_paths, ("verify", "b", "--graph", "g"), 1,
         "lies at 3.conv2/weight.npy in a bundle, not here"),
    Case("bundle2", "folders-swapped", swap_folders, VERIFY, 1, "3.conv2/output.npy: its npy file of tensor "
         "3.conv1/output lies at 3.conv1/output.npy"),
    Case("bundle2", "output-moved-to-another-folder", move_output_file, VERIFY, 1,
         "3.bn1/conv1-output.npy: its npy file of tensor 3.conv1/output lies at 3.conv1/output.npy"),
    Case("bundle2", "mem-and-coe-exchanged", exchange_mem_and_coe, VERIFY, 1,
         "0/weight.mem: its coe file of tensor 0/weight lies at 0/weight.coe"),
    Case("bundle2", "duplicate-layers-key", duplicate_key("b/manifest.json", "layers", []), VERIFY, 1,
         "the key 'layers' appears twice"),
    Case("bundle2", "duplicate-crc-key", duplicate_crc, VERIFY, 1, "the key 'crc32' appears twice"),
    Case("bundle2", "layer-without-inputs", manifest_edit(lambda d: layer_of(d, "2")["tensors"].update(inputs=[])),
         VERIFY, 1, r"layer 2 \(activation\): reads 0 inputs, its op takes 1"),
    Case("bundle2", "maxpool-edited-to-avg", manifest_edit(lambda d: layer_of(d, "4").update(op="avg_pool2d")),
         VERIFY, 1, "an average pool needs out_fmt"),
    Case("bundle2", "add-with-one-input", manifest_edit(lambda d: layer_of(d, "3.add")["tensors"].update(
        inputs=["2/output"])), VERIFY, 1, r"layer 3.add \(add\): reads 1 inputs, its op takes 2"),
    Case("bundle2", "flatten-without-inputs", manifest_edit(lambda d: layer_of(d, "7")["tensors"].update(inputs=[])),
         VERIFY, 1, "reads 0 inputs"),
    Case("bundle2", "conv-with-two-inputs", manifest_edit(lambda d: layer_of(d, "3.conv1")["tensors"].update(
        inputs=["2/output", "1/output"])), VERIFY, 1, r"layer 3.conv1 \(conv2d\): reads 2 inputs, its op takes 1"),
    Case("bundle2", "outputs-moved", manifest_edit(lambda d: d.update(outputs=["3.conv1/output"])), VERIFY, 1,
         r"declares outputs \['3.conv1/output'\]; a network bundle's output is its last layer's \(8/output\)"),
    Case("bundle2", "layer-listed-twice", manifest_edit(lambda d: d["layers"].insert(5, d["layers"][4])), VERIFY, 1,
         "layer 3.bn1 is listed twice"),
    Case("bundle2", "memory-depth-huge", manifest_edit(lambda d: d["tensors"]["0/weight"].update(memory_depth=2**27)),
         VERIFY, 1, "tensor 0/weight: .*memory_depth 134217728"),
    Case("bundle2", "word-width-huge", manifest_edit(lambda d: d["tensors"]["0/weight"].update(word_width=10**6)),
         VERIFY, 1, "tensor 0/weight: word_width 1000000 is wider than the 16384 bits"),

    # outputs inside or over inputs, with --force, through links
    Case("output2", "simulate-into-graph", NOTHING, ("simulate", "g", "--random", 1, "-o", "g/arrays.npz", "--force"),
         2, "output g/arrays.npz lies inside the input g"),
    Case("output2", "export-into-graph", NOTHING, ("export", "g", "-o", "g/graph.json", "--force"), 2,
         "output g/graph.json lies inside the input g"),
    Case("output2", "through-a-link", lambda ws: os.symlink("g", ws / "glink"),
         ("vectors", "g", "--random", 1, "-o", "glink/sub", "--force"), 2, "lies inside the input g"),
    Case("output2", "link-to-input", lambda ws: os.symlink("x.npy", ws / "xlink.npy"),
         ("simulate", "g", "--input", "x.npy", "-o", "xlink.npy", "--force"), 2, "would replace the input x.npy"),
    Case("output2", "audit-into-labels", lambda ws: labelled(ws, 1),
         ("audit", "g", "--data", "xs.npy", "--labels", "labels.npy", "-o", "labels.npy", "--force"), 2,
         "would replace the input labels.npy"),

    # QONNX: links out of the folder, validity, sizes, names, the reference's node count
    Case("onnx2", "external-data-link-to-parent", onnx_in_folder_with_secret, ("compile", "model/m.onnx", "-o", "g2"),
         2, "external data model/w.bin resolves to .*secret.bin, outside the folder"),
    Case("onnx2", "external-data-link-to-etc-passwd", onnx_external_link("/etc/passwd"), ONNX, 2,
         "resolves to /etc/passwd, outside the folder"),
    Case("onnx2", "compare-external-data-link", onnx_in_folder_with_secret,
         ("compare", "model/m.onnx", "--random", 1), 2, "outside the folder"),
    Case("onnx2", "duplicate-initializer", onnx_edit(_duplicate_initializer), ONNX, 2,
         "not valid ONNX: .*initializer name is not unique"),
    Case("onnx2", "two-writers", onnx_edit(_second_writer), ONNX, 2, "single static assignment"),
    Case("onnx2", "opset-1", onnx_edit(lambda m: _set_opset(m, "", 1)), ONNX, 2, "ai.onnx version 1; this tool reads 7.."),
    Case("onnx2", "opset-999", onnx_edit(lambda m: _set_opset(m, "", 999)), ONNX, 2, "ai.onnx version 999"),
    Case("onnx2", "opset-none", onnx_edit(lambda m: _drop_opset(m, "")), ONNX, 2, "no version of the ONNX domain"),
    Case("onnx2", "qonnx-opset-999", onnx_edit(lambda m: _set_opset(m, "qonnx.custom_op.general", 999)), ONNX, 2,
         "qonnx.custom_op.general version 999; QONNX's ops have versions 1, 2"),
    Case("onnx2", "ir-version-999", onnx_edit(lambda m: setattr(m, "ir_version", 999)), ONNX, 2,
         "ir_version 999: this tool reads ONNX ir_version 3.."),
    Case("onnx2", "duplicate-metadata", onnx_edit(lambda m: [m.metadata_props.add(key="k", value=v) for v in "ab"]),
         ONNX, 2, "duplicate keys in metadata_props"),
    Case("onnx2", "input-2-40", onnx_edit(_huge_input), ONNX, 2, "values a sample, more than the engine's"),
    Case("onnx2", "node-name-newline", onnx_edit(lambda m: _node_name(m, "conv\n1")), ONNX, 2, "control character"),

    # float scales (docs/arithmetic.md section 12)
    Case("onnx2", "float-act-scale-zero", float_edit(lambda m: _set_initializer(
        m, "relu1.act_quant.export_handler.lifted_tensor_6", 0.0)), ONNX, 2,
         r"node node__symbolic_2 \(Quant, relu1.act_quant\): a scale that is not positive"),
    Case("onnx2", "float-weight-scale-negative", float_edit(lambda m: _set_initializer(
        m, "conv1.weight_quant.export_handler.lifted_tensor_3", -0.01)), ONNX, 2,
         r"node node__symbolic_1 \(Quant, conv1.weight_quant\): scales of shape .* positive"),
    Case("onnx2", "float-two-batchnorms", float_edit(_second_batchnorm), ONNX, 2,
         "two BatchNormalizations .* no exact threshold here"),
    Case("onnx2", "float-variance-negative", float_edit(lambda m: _set_initializer(m, "bn1.running_var", -10.0)),
         ONNX, 2, "variance \\+ epsilon is not positive"),
    Case("onnx2", "float-output-without-quant", float_edit(_float_output), ONNX, 0,
         "the float tail node_linear after the last integer tensor"),  # a float tail, said
    Case("onnx2", "float-output-clipped", float_edit(_float_output_clipped), ONNX, 2,
         "is a float value .* no Quant ends, and it cannot be a float tail: .*Clip of two bounds"),
    Case("onnx2", "rescale-one-bit", float_edit(lambda m: None), ONNX + ("--rescale", "multiplier:1"), 2,
         r"give thresholds or multiplier:BITS \(BITS 2..32\)"),

    # options: clusters, memory images, images, training, sweeps
    Case("option", "scheduler-port-words", NOTHING, AUDIT_DATA + ("--scheduler", "tcp://127.0.0.1:abc"), 2,
         "--scheduler 'tcp://127.0.0.1:abc': Port could not be cast .* tcp://HOST:PORT"),
    Case("option", "scheduler-garbage", NOTHING, AUDIT_DATA + ("--scheduler", "garbage"), 2,
         "--scheduler 'garbage' is no scheduler address; give .* tcp://HOST:PORT"),
    Case("option", "workers-beyond-cores", NOTHING, AUDIT_DATA + ("--workers", 1000), 2,
         "--workers 1000 is more than this machine's .* --force-workers"),
    Case("option", "depth-2-40", NOTHING, ("vectors", "g", "--random", 1, "--depth", 2**40, "-o", "v"), 2,
         r"depth \(--depth\) 1099511627776: a memory image has at most"),
    Case("option", "word-width-million", NOTHING, ("vectors", "g", "--random", 1, "--word-width", 10**6, "-o", "v"), 2,
         r"--word-width\) 1000000: a memory word has at most 16384 bits"),
    Case("option", "resize-huge", image_folder, ("audit", "g", "--data", "imgs", "--crop", 8, "--resize", 100000), 2,
         "--resize 100000: images of more than 8192 pixels a side"),
    Case("option", "std-nan", image_folder, ("audit", "g", "--data", "imgs", "--crop", 8, "--std", "nan"), 2,
         r"--std \[nan\]: give 1 finite numbers"),
    Case("option", "epochs-huge", NOTHING, ("train", "--epochs", 10**8), 2, "100000000 is not in the range"),
    Case("option", "sweep-labels-99", lambda ws: labelled(ws, 99), SWEEP + ("--labels", "labels.npy", "--criterion",
                                                                        "accuracy"), 2,
         r"labels range from 99 to 99, but the graph's output has 10 classes \(0..9\)"),
    Case("option", "sweep-labels-negative", lambda ws: labelled(ws, -1), SWEEP + ("--labels", "labels.npy"), 2,
         "labels range from -1 to -1"),
    Case("option", "sweep-min-bits-100", lambda ws: labelled(ws, 1), SWEEP + ("--min-bits", 100), 2,
         "--min-bits 100: no register sized here needs more than"),
    Case("option", "sweep-layer-without-register", lambda ws: labelled(ws, 1),
         SWEEP + ("--layers", "7", "--registers", "accumulator"), 2,
         r"layer 7 \(flatten\) has no accumulator register to size"),
    Case("option", "vectors-long-layer-name", rename_node("3.add", "a" * 400), ("vectors", "g", "--random", 1, "-o", "v"),
         2, "its bundle folder name would be 400 bytes, more than the 255 a file system allows; rename"),
]


def _npz_with(ws, name, member_bytes):
    """arrays.npz with one member replaced by raw bytes (a forged .npy)."""
    path = ws / "g" / "arrays.npz"
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    members[f"{name}.npy"] = member_bytes
    with zipfile.ZipFile(path, "w") as zf:
        for n, data in members.items():
            zf.writestr(n, data)


def test_there_are_at_least_100_distinct_cases():
    hostile = [c for c in CASES if c.code]
    assert len(hostile) >= 100 and len({str(c) for c in CASES}) == len(CASES)
    assert {c.kind for c in hostile} == {"graph", "input", "weights", "bundle", "output", "train", "onnx",
                                         "graph2", "bundle2", "output2", "onnx2", "option"}


@pytest.mark.parametrize("case", CASES, ids=str)
def test_hostile_input(case, ws):
    case.setup(ws)
    before = snapshot(ws)
    result = cli(*case.args)
    after = snapshot(ws)
    text = result.output + getattr(result, "stderr", "")
    assert result.exit_code == case.code, text
    assert re.search(case.message, text), text
    assert "Traceback" not in text
    for advice in UNSAFE_ADVICE:
        assert advice not in text
    if case.code:
        assert after == before, "the working folder changed"
    assert not (ws / "pwned").exists()  # no pickle ran
