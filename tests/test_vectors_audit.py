"""Vector bundles (formats, manifest, verification, tampering) and the width audit."""
import json
import shutil

import numpy as np
import pytest
import torch.nn as nn
from hypothesis import given, strategies as st

import wageubn_sim
from forgery import forge_value
from wageubn_sim.reports import audit
from wageubn_sim.vectors import BundleError, verify_bundle, write_bundle
from wageubn_sim.vectors.formats import (pack_words, read_coe, read_mif, read_readmemh,
                                         unpack_words, write_coe, write_mif, write_readmemh)


@given(values=st.lists(st.integers(-2**11, 2**11 - 1), min_size=0, max_size=40),
       lanes=st.integers(1, 5))
def test_memory_images_round_trip(values, lanes):
    width = 12
    q = np.array(values, dtype=np.int64)
    words = pack_words(q, width, lanes)
    for write, read in ((write_readmemh, read_readmemh), (write_coe, read_coe), (write_mif, read_mif)):
        text = write(words, width * lanes, {"k": "v"})
        depth = len(words) if read is read_readmemh else max(len(words), 1)  # one 0 word when empty
        got = read(text, depth, width * lanes)[:len(words)]
        assert got == words
        assert np.array_equal(unpack_words(got, width, lanes, len(values)), q)


def test_word_syntax_matches_the_specs():
    words = pack_words(np.array([-1, 127, -128, 5]), 8, 2)  # lane 0 in the LSBs
    assert words == [0x7FFF, 0x0580]
    assert write_readmemh(words, 16, {"w": 16}).splitlines() == ["// w=16", "7fff", "0580"]
    coe = write_coe(words, 16, {})
    assert "memory_initialization_radix=16;" in coe and coe.rstrip().endswith("0580;")
    mif = write_mif(words, 16, {})
    assert "DEPTH = 2;" in mif and "WIDTH = 16;" in mif and "0 : 7fff;" in mif and "END;" in mif
    assert read_mif("DEPTH=4;WIDTH=8;ADDRESS_RADIX=HEX;DATA_RADIX=HEX;CONTENT BEGIN [0..3] : 5 6; END;",
                    4, 8) == [5, 6, 5, 6]
    with pytest.raises(ValueError, match="does not fit 8 signed bits"):
        pack_words(np.array([128]), 8, 1)


def _graph():
    import torch
    torch.manual_seed(0)
    m = wageubn_sim.quantize_model(nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, bias=True), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))).eval()
    x = np.random.default_rng(0).standard_normal((2, 2, 6, 6))
    return wageubn_sim.compile(m, x), x


@pytest.mark.parametrize("layout,lanes", [("NCHW", 1), ("NHWC", 3), ("NCHW", 4)])
def test_bundle_verifies_and_is_deterministic(tmp_path, layout, lanes):
    graph, x = _graph()
    a = write_bundle(graph, x, tmp_path / "a", layout, lanes, seed=7, command="test")
    b = write_bundle(graph, x, tmp_path / "b", layout, lanes, seed=7, command="test")
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for rel in files_a:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    report = verify_bundle(a)
    assert report.ok, str(report)
    assert report.layers == len(graph.nodes)
    manifest = json.loads((a / "manifest.json").read_text())
    conv = manifest["layers"][0]
    assert conv["op"] == "conv2d" and conv["params"]["padding"] == [1, 1]
    assert set(conv["tensors"]) >= {"inputs", "weight", "bias", "accumulator", "output"}
    w = manifest["tensors"][conv["tensors"]["weight"]]
    assert w["width"] == 8 and w["word_width"] == 8 * lanes and w["layout"] == layout


def test_word_width_pads_words(tmp_path):
    graph, x = _graph()
    root = write_bundle(graph, x, tmp_path / "v", lanes=2, word_width=64)
    manifest = json.loads((root / "manifest.json").read_text())
    w = manifest["tensors"]["0/weight"]
    assert w["word_width"] == 64 and w["width"] == 8
    lines = (root / "0" / "weight.mem").read_text().splitlines()
    assert all(len(l) == 16 and l[:12] == "0" * 12 for l in lines)  # 64-bit words, zero above lane 1
    assert verify_bundle(root).ok
    with pytest.raises(ValueError, match="tensor input: 2 lanes of 16 bits need 32-bit words, more than word_width=12"):
        write_bundle(graph, x, tmp_path / "z", lanes=2, word_width=12)
    assert not (tmp_path / "z").exists()


def test_recompute_detects_a_wrong_output_and_tampering(tmp_path):
    graph, x = _graph()
    root = write_bundle(graph, x, tmp_path / "v")
    # one flipped bit in a .mem file: its sha256 no longer matches
    memfile = root / "0" / "output.mem"
    lines = memfile.read_text().splitlines()
    lines[-1] = format(int(lines[-1], 16) ^ 1, f"0{len(lines[-1])}x")
    memfile.write_text("\n".join(lines) + "\n")
    report = verify_bundle(root)
    assert report.failures == ["0/output.mem: sha256 does not match the manifest (edited or corrupted)"]
    # a consistent forgery (files and hashes rewritten) is caught by recomputation
    root2 = write_bundle(graph, x, tmp_path / "w", kinds=("npy",))
    forge_value(root2, "4/output")
    report = verify_bundle(root2)
    assert report.failures == ["4/output.npy: 1 values differ from the recomputation"]


def test_bad_bundles(tmp_path):
    graph, x = _graph()
    root = write_bundle(graph, x, tmp_path / "v", kinds=("npy", "hex"))
    with pytest.raises(FileExistsError, match="--force"):
        write_bundle(graph, x, root)
    write_bundle(graph, x, root, force=True)  # replaced as a whole
    manifest = json.loads((root / "manifest.json").read_text())
    first = manifest["tensors"]["input"]["files"][0]
    first["path"] = "../../etc/passwd"
    (root / "manifest.json").write_text(json.dumps(manifest))
    assert any("escapes the bundle folder" in f for f in verify_bundle(root).failures)
    first["path"] = "0/../../outside.npy"
    (root / "manifest.json").write_text(json.dumps(manifest))
    assert any("escapes the bundle folder" in f for f in verify_bundle(root).failures)
    shutil.rmtree(root)
    root = write_bundle(graph, x, tmp_path / "v2")
    (root / "0" / "weight.coe").unlink()
    assert verify_bundle(root).failures == ["0/weight.coe is missing from the bundle"]
    with pytest.raises(BundleError, match="no manifest.json"):
        verify_bundle(tmp_path)
    with pytest.raises(ValueError, match="layout 'CHWN'"):
        write_bundle(graph, x, tmp_path / "z", layout="CHWN")
    with pytest.raises(ValueError, match="lanes=0"):
        write_bundle(graph, x, tmp_path / "z", lanes=0)
    assert not (tmp_path / "z").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_audit_outputs_and_widths():
    graph, x = _graph()
    report = audit(graph, x)
    rows = {(r.layer, r.tensor): r for r in report.rows}
    acc = rows[("0", "accumulator")]
    assert acc.needed_bits <= acc.bound_bits <= acc.static_bits
    out = graph.run(x, trace=True).layers["0"].trace["accumulator"]
    assert (acc.observed_min, acc.observed_max) == (int(out.min()), int(out.max()))
    assert acc.proposed.startswith(f"s{acc.bound_bits}.")
    csv_text = report.to_csv()
    assert csv_text.splitlines()[0].startswith("layer,op,tensor,declared")
    assert len(csv_text.splitlines()) == len(report.rows) + 1
    assert [r["layer"] for r in json.loads(report.to_json())["rows"][:2]] == ["input", "0"]
    assert report.to_markdown().startswith("# Width audit")
    page = report.to_html()
    # the whole network, then a histogram per register
    assert page.count("data:image/png;base64,") == 1 + len(report.rows) and "<table>" in page
    assert "needed" in report.to_table().splitlines()[0]


def test_audit_counts_saturation_events():
    import torch
    from wageubn_sim.config import Config, config_network
    torch.manual_seed(0)
    m = wageubn_sim.quantize_model(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())).eval()
    config_network(m, "m", Config(iostrict=True, acti=8, acti_all=4))
    x = np.random.default_rng(0).standard_normal((2, 1, 6, 6)) * 8
    graph = wageubn_sim.compile(m, x)
    rows = {(r.layer, r.tensor): r for r in audit(graph, x).rows}
    relu = rows[("1", "output")]
    assert relu.declared == "s4.7" and relu.saturations > 0 and relu.headroom_bits <= 0


def test_audit_and_manifest_give_each_register_its_own_events(tmp_path):
    """An iostrict conv with a 12-bit saturating accumulator: its input register rounds (ties),
    its accumulator saturates, its output rounds; each row shows that register's events only
    (and a BatchNorm's rows: input, xhat, output)."""
    import torch
    from wageubn_sim.config import Config, config_network
    from wageubn_sim.engine.registers import Accumulator, Events
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3, bias=False), nn.BatchNorm2d(2), nn.ReLU())  # no bias: it would not fit the 12-bit accumulator
    net[1].running_mean.fill_(0.5)
    m = wageubn_sim.quantize_model(net).eval()
    config_network(m, "m", Config(iostrict=True, acti=8, acti_all=4))
    x = np.random.default_rng(0).standard_normal((2, 1, 6, 6)) * 8
    graph = wageubn_sim.compile(m, x, accumulators=Accumulator(12, "SAT"))
    layers = graph.run(x, trace=True).layers
    report = audit(graph, x)
    for node in graph.nodes:  # a layer's rows cover all its registers: their events add up
        own = [r for r in report.rows if r.layer == node.name]
        assert [sum(getattr(r, k) for r in own) for k in ("wraps", "saturations", "ties", "underflows")] \
            == [getattr(layers[node.name].events, k) for k in ("wraps", "saturations", "ties", "underflows")]
    assert [r.tensor for r in report.rows if r.layer == "1"] == ["input", "xhat", "output"]
    conv = layers["0"]
    rows = {r.tensor: r for r in report.rows if r.layer == "0"}
    assert list(rows) == ["input", "accumulator", "output"]
    assert rows["input"].declared == "s16.7"
    for name, row in rows.items():
        ev = conv.events_at(name)
        assert (row.wraps, row.saturations, row.ties, row.underflows) == \
            (ev.wraps, ev.saturations, ev.ties, ev.underflows)
    assert rows["input"].ties > 0 and rows["accumulator"].saturations > 0
    assert rows["accumulator"].ties == 0 and rows["output"].saturations == 0
    assert Events.total(conv.events_at(r) for r in rows) == conv.events

    root = write_bundle(graph, x, tmp_path / "b")
    verify_bundle(root)  # the schema included
    manifest = json.loads((root / "manifest.json").read_text())
    layer = next(entry for entry in manifest["layers"] if entry["name"] == "0")
    assert set(layer["register_events"]) == {"input", "accumulator", "output"}
    for kind, count in layer["events"].items():
        assert count == sum(r[kind] for r in layer["register_events"].values())
    assert layer["register_events"]["accumulator"]["saturations"] == rows["accumulator"].saturations


def test_training_step_bundle_verifies_and_catches_tampering(tmp_path):
    import torch

    from wageubn_sim.demo import DEMO_DATA, demo_model, images_to_input
    from wageubn_sim.function.optim import WageubnSGD
    from wageubn_sim.training import IntegerTrainer
    from wageubn_sim.vectors.training import write_training_bundle
    torch.manual_seed(0)
    model = wageubn_sim.quantize_model(demo_model()).double().train()
    WageubnSGD(model.parameters(), 0.25).snap_to_grid()
    with np.load(DEMO_DATA) as data:
        x, y = images_to_input(data["train_images"][:8]), data["train_labels"][:8]
    trainer = IntegerTrainer.from_model(model, x, lr=0.25)
    trainer.step(x, y)  # the bundle records step 1: its G draws stream 1
    root = write_training_bundle(trainer, x, y, tmp_path / "t", kinds=("npy", "mem"))
    report = verify_bundle(root)
    assert report.ok, str(report)
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["training"]["step"] == 1 and manifest["training"]["update"]["order"] == "quantize_after"
    roles = {r for layer in manifest["training"]["layers"] for r in layer["tensors"]}
    assert {"error", "weight_grad_raw", "weight_grad", "weight_master_after", "gamma_grad",
            "beta_momentum_after"} <= roles
    # a consistent forgery of one G value (files and hashes rewritten) is caught by recomputation
    forge_value(root, "0/weight_grad")
    report = verify_bundle(root)
    assert not report.ok and any("0/weight_grad: recomputed G differs" in f for f in report.failures)
