"""Dataset-scale runs: streamed sources, the mergeable audit, the width sweep, and both on a
Dask LocalCluster, byte-identical to the serial run (uneven shards, a worker killed mid-run)."""
from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings, strategies as st

import wageubn_sim
from wageubn_sim.cli import main
from wageubn_sim.data import shards
from wageubn_sim.data.shards import KILL_HOOK, dask_client, map_reduce, shard_ranges
from wageubn_sim.data.sources import (NpyFileSource, NpyFolderSource, NpzArraySource, Preprocess,
                                      open_data)
from wageubn_sim.demo import DEMO_DATA, images_to_input
from wageubn_sim.fixedpoint import Format
from wageubn_sim.reports.audit import audit, audit_batch, histogram, histogram_edges
from wageubn_sim.reports.sweep import Criterion, sweep

MODEL = "wageubn_sim.demo:demo_model"


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The trained demo graph and 203 held-out digits (a prime: no shard size divides it)."""
    root = tmp_path_factory.mktemp("demo")
    with np.load(DEMO_DATA) as data:
        x = images_to_input(data["test_images"][:203])
        labels = data["test_labels"][:203].astype(np.int64)
    np.save(root / "x.npy", x)
    assert cli("compile", MODEL, "--weights", DEMO_DATA, "--input", root / "x.npy", "-o", root / "g").exit_code == 0
    return wageubn_sim.load_graph(root / "g"), x, labels, root


_ENVIRON_BEFORE = dict(os.environ)


@pytest.fixture(scope="module")
def client():
    with dask_client(workers=2) as c:
        yield c


# ---- sources ---------------------------------------------------------------------------------

def test_every_source_gives_the_same_audit_as_the_array(demo, tmp_path):
    graph, x, labels, _ = demo
    want = audit(graph, x).to_json()
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "stored.npz", inputs=x, labels=labels)
    np.savez_compressed(tmp_path / "packed.npz", inputs=x, labels=labels)
    folder = tmp_path / "parts"
    folder.mkdir()
    for i, (a, b) in enumerate([(0, 70), (70, 71), (71, 203)]):  # batches, and one file of one sample
        np.save(folder / f"{i:03d}.npy", x[a] if b - a == 1 else x[a:b])
    sources = [tmp_path / "x.npy", tmp_path / "stored.npz", tmp_path / "packed.npz", folder,
               iter([x[i:i + 50] for i in range(0, len(x), 50)])]
    for data in sources:
        assert audit(graph, data, batch=16, shard_size=37).to_json() == want, data
    packed = open_data(tmp_path / "packed.npz")
    assert isinstance(packed, NpzArraySource) and packed.has_labels
    assert np.array_equal(packed.read(150, 203)[1], labels[150:])
    assert isinstance(open_data(folder, graph.inputs[0].shape), NpyFolderSource)


def test_an_npy_source_maps_slices_and_never_reads_the_whole_file(tmp_path):
    x = np.arange(6 * 2 * 3, dtype=np.int16).reshape(6, 2, 3)
    np.save(tmp_path / "x.npy", x)
    source = NpyFileSource(tmp_path / "x.npy")
    got, _ = source.read(2, 5)
    assert np.array_equal(got, x[2:5]) and got.flags.owndata
    (tmp_path / "cut.npy").write_bytes((tmp_path / "x.npy").read_bytes()[:-3])
    with pytest.raises(ValueError, match="truncated or padded"):
        NpyFileSource(tmp_path / "cut.npy")
    np.save(tmp_path / "f.npy", np.asfortranarray(x))
    with pytest.raises(ValueError, match="Fortran order"):
        NpyFileSource(tmp_path / "f.npy")
    np.save(tmp_path / "o.npy", np.array([object()], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="never loads pickled objects"):
        NpyFileSource(tmp_path / "o.npy")


def test_an_npz_member_bomb_is_refused(tmp_path):
    x = np.zeros((1000, 64), np.float64)
    np.savez_compressed(tmp_path / "z.npz", x=x)
    with zipfile.ZipFile(tmp_path / "z.npz") as zf:
        info = zf.getinfo("x.npy")
    assert info.compress_type == zipfile.ZIP_DEFLATED
    data = bytearray((tmp_path / "z.npz").read_bytes())
    # forge the central directory's uncompressed size far beyond what deflate can give
    at = data.rfind(b"PK\x01\x02")
    data[at + 24:at + 28] = (1 << 31).to_bytes(4, "little")
    (tmp_path / "bomb.npz").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="forged archive"):
        NpzArraySource(tmp_path / "bomb.npz")


def test_a_damaged_compressed_member_is_refused_when_a_batch_is_read(demo, tmp_path):
    """The header decompresses cleanly, the data further on does not: exit 2, named."""
    graph, x, _, _ = demo
    np.savez_compressed(tmp_path / "z.npz", x=x)
    with zipfile.ZipFile(tmp_path / "z.npz") as zf:
        info = zf.getinfo("x.npy")
    data = bytearray((tmp_path / "z.npz").read_bytes())
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    for k in range(start + info.compress_size // 2, start + info.compress_size - 8):
        data[k] ^= 0x5A  # the second half of the deflate stream
    (tmp_path / "bad.npz").write_bytes(bytes(data))
    source = NpzArraySource(tmp_path / "bad.npz")
    with pytest.raises(ValueError, match="is damaged|is truncated"):
        source.read(0, len(source))
    result = CliRunner().invoke(main, ["audit", str(demo[3] / "g"), "--data", str(tmp_path / "bad.npz"),
                                       "-o", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "bad.npz, array 'x'" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_image_folders_are_preprocessed_as_torchvision_does(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(0)
    for k, name in enumerate(["cat", "dog"]):
        (tmp_path / name).mkdir()
        for i in range(3):
            pixels = rng.integers(0, 256, (10 + i, 12, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / name / f"{i}.png")
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    pre = Preprocess(3, 8, 8, [0.5, 0.5, 0.5], [0.25, 0.25, 0.25])
    source = open_data(tmp_path, (3, 8, 8), pre)
    x, labels = source.read(0, len(source))
    assert len(source) == 6 and labels.tolist() == [0, 0, 0, 1, 1, 1] and x.shape == (6, 3, 8, 8)
    with Image.open(tmp_path / "cat" / "0.png") as image:  # the same steps, by hand
        small = image.convert("RGB").resize((10, 8), Image.BILINEAR)  # shorter side 10 -> 8
        crop = np.asarray(small.crop((1, 0, 9, 8)), np.float64) / 255.0
    assert np.allclose(x[0], ((crop - 0.5) / 0.25).transpose(2, 0, 1), atol=0)
    Image.new("L", (9000, 9000)).save(tmp_path / "dog" / "huge.png")  # beyond MAX_IMAGE_PIXELS
    source = open_data(tmp_path, (3, 8, 8), pre)
    with pytest.raises(ValueError, match="huge.png cannot be used"):
        source.read(0, len(source))


# ---- the mergeable audit -------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", [Format(8, 7), Format(3, 0), Format(5, 2, signed=False), Format(None, 4)])
def test_histogram_edges_follow_from_the_format_alone(fmt):
    edges = histogram_edges(fmt)
    assert np.all(np.diff(edges) > 0)
    if fmt.bounded:
        assert edges[0] == fmt.min_int and edges[-1] == fmt.max_int + 1
        assert len(edges) - 1 == min(1 << fmt.bits, 64)
        q = np.arange(fmt.min_int, fmt.max_int + 1)
        assert histogram(q, edges).sum() == q.size and np.all(histogram(q, edges) == q.size // (len(edges) - 1))
    else:
        q = np.array([-2**61, -5, -1, 0, 1, 3, 4, 2**61 - 1])
        counts = histogram(q, edges)
        assert counts.sum() == q.size
        assert counts[np.searchsorted(edges, 4, side="right") - 1] == 1  # [4, 8) holds 4 only


@given(st.one_of(st.builds(Format, st.integers(2, 62), st.integers(-9, 9), st.just(True)),
                 st.builds(Format, st.integers(1, 61), st.integers(-9, 9), st.just(False)),
                 st.builds(Format, st.none(), st.integers(-9, 9))),
       st.lists(st.integers(-2**61, 2**61 - 1), max_size=50), st.integers(0, 2**32))
def test_histogram_counts_equal_their_definition(fmt, extra, seed):
    """The one-pass kernel against np.searchsorted on the edges (values in the format, and
    anything in the domain for an unbounded one)."""
    edges = histogram_edges(fmt)
    lo, hi = (fmt.min_int, fmt.max_int) if fmt.bounded else (-2**61, 2**61 - 1)
    q = np.random.default_rng(seed).integers(lo, hi, 300, endpoint=True)
    q = np.concatenate([q, np.array([lo, hi, 0 if lo <= 0 else lo] + [v for v in extra if lo <= v <= hi],
                                    dtype=np.int64)])
    want = np.bincount(np.searchsorted(edges, q, side="right") - 1, minlength=len(edges) - 1)
    assert histogram(q, edges).tolist() == want.tolist()


@settings(max_examples=max(4, settings.default.max_examples // 10), deadline=None)
@given(st.integers(1, 203), st.integers(1, 64), st.randoms(use_true_random=False))
def test_shards_of_any_size_merge_to_the_single_pass(demo_small, shard, batch, rng):
    graph, x, want = demo_small
    ranges = shard_ranges(len(x), shard)
    rng.shuffle(ranges)  # any order of shards
    parts = [map_reduce(audit_batch, graph, open_data(x[a:b]), batch, shard) for a, b in ranges]
    merged = parts[0]
    for p in parts[1:]:
        merged = merged.merge(p)
    from wageubn_sim.reports.audit import audit_report
    assert audit_report(graph, merged).to_json() == want


@pytest.fixture(scope="module")
def demo_small(demo):
    graph, x, _, _ = demo
    return graph, x, audit(graph, x, batch=len(x), shard_size=len(x)).to_json()


def test_the_audit_json_holds_samples_rows_and_histograms(demo):
    graph, x, _, _ = demo
    data = json.loads(audit(graph, x[:10]).to_json())
    assert data["samples"] == 10 and len(data["histograms"]) == len(data["rows"])
    for h in data["histograms"]:
        assert len(h["edges"]) == len(h["counts"]) + 1 and sum(h["counts"]) > 0


# ---- the sweep --------------------------------------------------------------------------------------

def test_sweep_proposals_meet_their_criterion_on_the_data(demo):
    graph, x, labels, _ = demo
    data = x[:64]
    report, proposed = sweep(graph, data, "exact", overflows=("SAT", "WRAP"), batch=32, shard_size=40)
    assert report.combined_passes and report.combined.mismatches == 0
    assert np.array_equal(proposed.run(data).q, graph.run(data).q)  # bit-identical, checked directly
    by_key = {(r.layer, r.register): r for r in report.registers}
    for c in report.proposal:
        assert c.bits <= by_key[(c.layer, c.register)].needed_bits or c.overflow != "WRAP"
    accs = [n for n in proposed.nodes if n.op in ("conv2d", "linear")]
    assert all(n.params.accumulator.bits is not None for n in accs)
    report, proposed = sweep(graph, data, "lsb:64", registers=("output",), batch=64, shard_size=64)
    diff = np.abs(proposed.run(data).q - graph.run(data).q).max()
    assert report.combined_passes and diff == report.combined.max_lsb <= 64
    report, proposed = sweep(graph, (data, labels[:64]), "accuracy:0.05", registers=("accumulator",))
    ours = np.argmax(proposed.run(data).q, axis=1) == labels[:64]
    theirs = np.argmax(graph.run(data).q, axis=1) == labels[:64]
    assert report.combined_passes and ours.sum() >= theirs.sum() - 0.05 * 64


@pytest.mark.parametrize("text", ["nearly", "lsb:-1", "top1:2", "lsb:x", "exact:1"])
def test_a_bad_criterion_names_the_forms(text):
    with pytest.raises(ValueError, match="write exact, lsb:N"):
        Criterion.parse(text)


# ---- on a Dask cluster --------------------------------------------------------------------------------

def test_a_local_cluster_gives_the_serial_bytes(demo, client):
    graph, x, labels, root = demo
    # the nanny sets its workers' environment in this process too: what would break Numba here
    # (a NUMBA_NUM_THREADS unlike its pool's: no compile would work any more) is put back
    import numba
    assert os.environ.get("NUMBA_NUM_THREADS") == _ENVIRON_BEFORE.get("NUMBA_NUM_THREADS")
    assert numba.njit(lambda v: v + 1)(1) == 2  # a fresh compile in this process
    serial = audit(graph, root / "x.npy", batch=32, shard_size=203).to_json()
    assert audit(graph, root / "x.npy", client, batch=13, shard_size=29).to_json() == serial
    assert audit(graph, iter([x[:100], x[100:]]), client).to_json() == serial  # batches as tasks
    data = x[:60]
    want, want_graph = sweep(graph, data, "exact", overflows=("SAT", "WRAP"), batch=60, shard_size=60)
    got, got_graph = sweep(graph, data, "exact", overflows=("SAT", "WRAP"), client=client, batch=7, shard_size=23)
    assert got.to_json() == want.to_json() and got_graph.to_json() == want_graph.to_json()


def test_a_worker_killed_mid_run_changes_nothing(demo, tmp_path, monkeypatch):
    graph, x, _, root = demo
    serial = audit(graph, root / "x.npy").to_json()
    marker = tmp_path / "killed"
    monkeypatch.setenv(KILL_HOOK, f"3:{marker}")  # the workers inherit it: shard 3 dies once
    with dask_client(workers=2) as c:
        got = audit(graph, root / "x.npy", c, batch=16, shard_size=30).to_json()
    assert marker.exists()  # a worker did die
    assert got == serial


def test_the_readme_cluster_commands_give_the_serial_bytes(demo, tmp_path):
    """`dask scheduler` and `dask worker ADDRESS --nthreads 1` as the README starts them, then
    `audit --scheduler`."""
    import socket
    import subprocess
    import sys
    import time
    graph, x, _, root = demo
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    dask = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    env = dict(os.environ, NUMBA_NUM_THREADS="1")
    procs = [subprocess.Popen([*dask, "--host", "127.0.0.1", "--port", str(port), "--dashboard-address", ":0"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)]
    try:
        procs.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address,
                                       "--nthreads", "1", "--nworkers", "2", "--no-dashboard"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env))
        from distributed import Client
        with Client(address, timeout="60s") as c:
            c.wait_for_workers(2, timeout=60)
        result = cli("audit", root / "g", "--data", root / "x.npy", "--scheduler", address,
                     "--shard-size", 37, "-o", tmp_path / "remote")
        assert result.exit_code == 0, result.output
        serial = audit(graph, root / "x.npy").to_json()
        assert (tmp_path / "remote" / "audit.json").read_text() == serial
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


# ---- the command line ------------------------------------------------------------------------------

def test_audit_and_sweep_commands(demo, tmp_path):
    graph, x, _, root = demo
    serial = cli("audit", root / "g", "--data", root / "x.npy", "-o", tmp_path / "a1")
    assert serial.exit_code == 0 and "wrote" in serial.output
    parallel = cli("audit", root / "g", "--data", root / "x.npy", "--workers", 2, "--shard-size", 50,
                   "-o", tmp_path / "a2")
    assert parallel.exit_code == 0
    assert (tmp_path / "a1" / "audit.json").read_bytes() == (tmp_path / "a2" / "audit.json").read_bytes()
    np.save(tmp_path / "small.npy", x[:40])
    result = cli("sweep", root / "g", "--data", tmp_path / "small.npy", "--registers", "accumulator",
                 "-o", tmp_path / "s")
    assert result.exit_code == 0 and "combined (exact, 40 samples): met" in result.output
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["graph", "sweep.html", "sweep.json", "sweep.txt"]
    assert cli("vectors", tmp_path / "s" / "graph", "--input", tmp_path / "small.npy", "-o", tmp_path / "b").exit_code == 0
    assert cli("verify", tmp_path / "b").exit_code == 0


@pytest.mark.parametrize("args, message", [
    (("--data", "nowhere.npy"), "data nowhere.npy does not exist"),
    (("--data", "x.npy", "--random", 3), "give --data, or --input/--random, not both"),
    (("--data", "wrong.npy"), "holds samples of shape \\(3, 3\\), the graph's input is \\(1, 8, 8\\)"),
    (("--data", "x.npy", "--labels", "short.npy"), "labels file .* has shape \\(2,\\), expected \\(203,\\)"),
    (("--data", "x.npy", "--workers", 2, "--scheduler", "tcp://127.0.0.1:1"), "not both"),
    (("--data", "x.npy", "--scheduler", "tcp://127.0.0.1:1"), "no Dask scheduler answers at tcp://127.0.0.1:1"),
])
def test_bad_data_options_exit_2(demo, monkeypatch, args, message):
    graph, x, _, root = demo
    monkeypatch.chdir(root)
    monkeypatch.setattr(shards, "SCHEDULER_TIMEOUT", "1s")  # nothing listens at port 1
    np.save(root / "wrong.npy", np.zeros((4, 3, 3)))
    np.save(root / "short.npy", np.zeros(2, np.int64))
    result = CliRunner().invoke(main, ["audit", "g", *map(str, args)])
    assert result.exit_code == 2, result.output
    import re
    assert re.search(message, result.output), result.output
    assert "Traceback" not in result.output


# ---- the input register ----------------------------------------------------------------------

def test_inputs_beyond_the_format_get_a_row_and_a_warning(demo, tmp_path):
    """Digits times 1000 saturate the demo's s16.8 input (+-128): the audit's input row counts
    them exactly and needs the data's own width; every command warns, naming the counts and
    the ranges; --input-warning raises the threshold; reports carry the row."""
    graph, x, labels, root = demo
    big = x[:40] * 1000
    np.save(tmp_path / "big.npy", big)
    scaled = np.round(big * 256)
    saturated = int(np.count_nonzero(scaled > 32767))
    assert saturated > 0.1 * big.size
    result = CliRunner().invoke(main, ["audit", str(root / "g"), "--data", str(tmp_path / "big.npy"),
                                       "-o", str(tmp_path / "a")], catch_exceptions=False)
    assert result.exit_code == 0
    assert f"warning: the input saturates on {saturated} of {big.size} values" in result.stderr
    assert "format s16.8 (-128 .. 127.996" in result.stderr and "ranges over 0 .. 1000" in result.stderr
    row = json.loads((tmp_path / "a" / "audit.json").read_text())["rows"][0]
    assert (row["layer"], row["op"], row["saturations"], row["observed_max"]) == ("input", "input", saturated, 256000)
    assert row["needed_bits"] == 19 and row["headroom_bits"] == 16 - 19 and row["values"] == 64
    assert (tmp_path / "a" / "audit.csv").read_text().splitlines()[1].startswith(f"input,input,input,s16.8,8,0,256000,19")
    markdown = (tmp_path / "a" / "audit.md").read_text()
    assert "**Warning:** the input saturates" in markdown and "| input | input | s16.8 | 0 | 256000 | 19 |" in markdown
    quiet = CliRunner().invoke(main, ["simulate", str(root / "g"), "--input", str(tmp_path / "big.npy"),
                                      "--input-warning", "0.9", "-o", str(tmp_path / "q.npy")],
                               catch_exceptions=False)
    assert quiet.exit_code == 0 and "warning" not in quiet.stderr
    for args in (["simulate", root / "g", "--input", tmp_path / "big.npy", "-o", tmp_path / "o.npy"],
                 ["vectors", root / "g", "--input", tmp_path / "big.npy", "-o", tmp_path / "v", "--formats", "npy"],
                 ["compare", MODEL, "--weights", DEMO_DATA, "--input", tmp_path / "big.npy"],
                 ["sweep", root / "g", "--data", tmp_path / "big.npy", "--registers", "accumulator",
                  "--layers", "8", "-o", tmp_path / "s"]):
        result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
        assert f"warning: the input saturates on {saturated} of {big.size} values" in result.stderr, args[0]
    swept = json.loads((tmp_path / "s" / "sweep.json").read_text())
    assert swept["input"]["saturations"] == saturated
    fine = CliRunner().invoke(main, ["simulate", str(root / "g"), "--input", str(root / "x.npy"),
                                     "-o", str(tmp_path / "o2.npy")], catch_exceptions=False)
    assert fine.exit_code == 0 and "warning" not in fine.stderr


def test_the_sweep_reports_register_bits_for_every_proposal_tried(demo):
    graph, x, labels, _ = demo
    report, _ = sweep(graph, (x[:24], labels[:24]), "accuracy:0.05", registers=("accumulator", "output"),
                      layers=["3.conv1", "3.relu1", "8"])
    data = json.loads(report.to_json())
    values = {(r["layer"], r["register"]): r["values"] for r in data["registers"]}
    assert data["proposals_tried"] and data["proposals_tried"][-1]["passes"] == data["combined"]["passes"]
    last = data["proposals_tried"][-1]
    assert last["total_register_bits"] == sum(c["bits"] * values[(c["layer"], c["register"])] for c in data["proposal"])
    assert data["reference_total_register_bits"] == sum(
        (r["reference_bits"] or r["needed_bits"]) * r["values"] for r in data["registers"])
    trained = graph.run(x[:24], trace=True)
    for r in data["registers"]:  # values per sample: the register's elements per image
        out = trained.layers[r["layer"]]
        tensor = out.trace.get(r["register"], out.q) if r["register"] == "accumulator" else out.q
        assert r["values"] == tensor[0].size
    crit = Criterion.parse("accuracy:0.05")
    m = report.combined
    assert crit.score(m) == m.correct / m.samples and crit.limit(m) == m.reference_correct / m.samples - 0.05
