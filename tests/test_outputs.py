"""Outputs: never replaced unasked, not even by a race; with --force the old or the new output
is in place at every instant (a kill injected at each point of the replace); staging left by a
killed run is named for what it is and cleaned by the next run; files are fsynced before they
are published; write errors and internal errors have exit codes of their own."""
import errno
import multiprocessing
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from wageubn_sim.cli import main
from wageubn_sim.files import write as files_write
from wageubn_sim.files.write import (KILL_AT_ENV, STAGE_TAG, write_file_atomically,
                                     write_folder_atomically)

OLD = {"a.txt": b"old", "sub/b.txt": b"old b"}
NEW = {"a.txt": b"new", "c.txt": b"new c"}


def folder_contents(path: Path) -> dict:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def leftovers(parent: Path) -> list:
    return sorted(p.name for p in parent.iterdir() if STAGE_TAG in p.name)


def _race(target, kind, start, results, index):
    start.wait()
    try:
        if kind == "folder":
            write_folder_atomically(target, {"who.txt": str(index).encode()}, False)
        else:
            write_file_atomically(target, str(index).encode(), False)
        results[index] = "won"
    except FileExistsError:
        results[index] = "refused"


@pytest.mark.parametrize("kind", ["folder", "file"])
def test_two_writers_without_force_exactly_one_wins(tmp_path, kind):
    ctx = multiprocessing.get_context("fork")
    for round_ in range(5):
        target = tmp_path / f"{kind}{round_}"
        start, results = ctx.Barrier(2), ctx.Manager().dict()
        procs = [ctx.Process(target=_race, args=(target, kind, start, results, i)) for i in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
        assert sorted(results.values()) == ["refused", "won"]
        winner = next(i for i, r in results.items() if r == "won")
        got = (target / "who.txt").read_bytes() if kind == "folder" else target.read_bytes()
        assert got == str(winner).encode()
        assert not leftovers(tmp_path)


def test_no_replace_refuses_an_existing_empty_folder(tmp_path):
    """rename(2) would replace an empty folder silently: the no-replace rename does not."""
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError):
        write_folder_atomically(tmp_path / "out", NEW, False)
    assert list((tmp_path / "out").iterdir()) == [] and not leftovers(tmp_path)


_WRITER = """
import sys
from pathlib import Path
from wageubn_sim.files.write import write_file_atomically, write_folder_atomically
target, kind = Path(sys.argv[1]), sys.argv[2]
if kind == "folder":
    write_folder_atomically(target, {"a.txt": b"new", "c.txt": b"new c"}, True)
else:
    write_file_atomically(target, b"new file", True)
"""


@pytest.mark.parametrize("kind", ["folder", "file"])
@pytest.mark.parametrize("point,expect", [("started", "old"), ("staged", "old"), ("exchanged", "new")])
def test_a_kill_during_a_forced_replace_leaves_old_or_new(tmp_path, kind, point, expect):
    target = tmp_path / "out"
    if kind == "folder":
        write_folder_atomically(target, OLD, False)
    else:
        write_file_atomically(target, b"old file", False)
    env = dict(os.environ, **{KILL_AT_ENV: point})
    done = subprocess.run([sys.executable, "-c", _WRITER, str(target), kind], env=env)
    assert done.returncode == -signal.SIGKILL  # killed at that point, by the hook
    got = folder_contents(target) if kind == "folder" else target.read_bytes()
    want = {"old": OLD if kind == "folder" else b"old file",
            "new": NEW if kind == "folder" else b"new file"}[expect]
    assert got == want  # whole, never a mix
    assert leftovers(tmp_path) and all(name.startswith(f".out.{STAGE_TAG}.") for name in leftovers(tmp_path))
    # the next run (without the hook) replaces the output and removes what the killed run left
    done = subprocess.run([sys.executable, "-c", _WRITER, str(target), kind])
    assert done.returncode == 0 and not leftovers(tmp_path)
    got = folder_contents(target) if kind == "folder" else target.read_bytes()
    assert got == (NEW if kind == "folder" else b"new file")


def test_without_flagged_renames_the_rules_still_hold(tmp_path, monkeypatch):
    """Where the system has no renameat2/renamex_np: os.link (files) and a checked rename
    (folders) without --force, os.replace and a move aside with it."""
    monkeypatch.setattr(files_write, "_RENAME", None)
    write_file_atomically(tmp_path / "f", b"1", False)
    with pytest.raises(FileExistsError):
        write_file_atomically(tmp_path / "f", b"2", False)
    write_file_atomically(tmp_path / "f", b"3", True)
    assert (tmp_path / "f").read_bytes() == b"3"
    write_folder_atomically(tmp_path / "d", OLD, False)
    with pytest.raises(FileExistsError):
        write_folder_atomically(tmp_path / "d", NEW, False)
    write_folder_atomically(tmp_path / "d", NEW, True)
    assert folder_contents(tmp_path / "d") == NEW and not leftovers(tmp_path)


def test_every_file_is_fsynced_before_it_is_published(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    write_folder_atomically(tmp_path / "d", NEW, False)
    write_file_atomically(tmp_path / "f", b"x", False)
    staged = [Path(p) for p in synced]
    for rel in NEW:  # each file was synced under its staging name, before the rename
        assert any(p.name == Path(rel).name and STAGE_TAG in p.parent.name for p in staged)
    assert any(STAGE_TAG in p.name for p in staged)  # the single file, before its rename
    assert Path(tmp_path) in staged  # and the folder that holds the new names, after


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def graph(tmp_path):
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8))
    np.save(tmp_path / "x.npy", x)
    assert _cli("compile", "wageubn_sim.demo:demo_model", "--input", tmp_path / "x.npy",
                "-o", tmp_path / "g").exit_code == 0
    return tmp_path / "g"


def test_a_full_disk_is_bad_input_and_leaves_nothing(graph, tmp_path):
    """RLIMIT_FSIZE makes every write past 4 KiB fail as on a full file system (EFBIG)."""
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    cmd = [sys.executable, "-m", "wageubn_sim.cli", "vectors", str(graph), "--random", "2",
           "-o", str(tmp_path / "v")]
    done = subprocess.run(cmd, preexec_fn=limit, capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert "cannot write" in done.stderr and "File too large" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "v").exists() and not leftovers(tmp_path)


def test_an_unwritable_folder_is_bad_input(graph, tmp_path, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path))

    monkeypatch.setattr(files_write.tempfile, "mkdtemp", denied)
    r = _cli("vectors", graph, "--random", 1, "-o", tmp_path / "v")
    assert r.exit_code == 2 and "Permission denied" in r.output and "may write to" in r.output
    assert not (tmp_path / "v").exists()


def test_an_internal_error_keeps_its_traceback_and_exits_3(graph, tmp_path, monkeypatch):
    from wageubn_sim.graph import ir

    def broken(self, *args, **kwargs):
        raise TypeError("a bug")

    monkeypatch.setattr(ir.Graph, "run", broken)
    r = _cli("simulate", graph, "--random", 1, "-o", tmp_path / "y.npy")
    assert r.exit_code == 3
    assert "Traceback" in r.output and "TypeError: a bug" in r.output and "internal error" in r.output
    assert not (tmp_path / "y.npy").exists()


def tree(path: Path) -> dict:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("point,expect", [("staged", "old"), ("exchanged", "new")])
def test_vectors_force_killed_over_a_folder_leaves_old_or_new_and_never_harms_its_input(graph, tmp_path, point,
                                                                                      expect):
    """`vectors G -o OUT --force` over an existing bundle, killed at each point of the replace:
    OUT holds the old bundle or the new one whole, and the graph it reads is untouched. The
    same command aimed inside its input, directly or through a link, is refused first."""
    out = tmp_path / "bundle"
    assert _cli("vectors", graph, "--random", 1, "--seed", 1, "-o", out).exit_code == 0
    old, graph_before = tree(out), tree(graph)
    cmd = [sys.executable, "-m", "wageubn_sim.cli", "vectors", str(graph), "--random", "1", "--seed", "2",
           "-o", str(out), "--force"]
    done = subprocess.run(cmd, env=dict(os.environ, **{KILL_AT_ENV: point}), capture_output=True)
    assert done.returncode == -signal.SIGKILL
    assert tree(graph) == graph_before
    if expect == "old":
        assert tree(out) == old
    else:
        new = tree(out)
        assert new != old and set(new) == set(old)  # the seed-2 bundle, whole
    os.symlink(graph, tmp_path / "link")
    for target in (graph / "sub", tmp_path / "link" / "sub", graph):
        r = _cli("vectors", graph, "--random", 1, "-o", target, "--force")
        assert r.exit_code == 2 and "input" in r.output, r.output
    assert tree(graph) == graph_before
