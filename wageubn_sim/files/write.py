"""Writing outputs: a folder's files land together or not at all, a file is whole or absent,
and nothing that exists is replaced unless asked, not even by a race.

How: an output is built beside its target under a staging name, every file and folder of it
is fsynced, and it is published by one rename:

* without ``overwrite``, a no-replace rename (Linux ``renameat2(RENAME_NOREPLACE)``, macOS
  ``renamex_np(RENAME_EXCL)``): of two writers racing for one target exactly one succeeds, the
  other gets FileExistsError;
* with ``overwrite``, an atomic exchange of the new output and the old one
  (``RENAME_EXCHANGE``, ``RENAME_SWAP``), after which the old one, now under the staging
  name, is removed: at every instant the old or the new output is in place.

Where the system or file system has neither, a file is published by ``os.link`` (no-replace)
or ``os.replace`` (atomic), and a folder by a check and ``os.rename``: then two racing
writers can both pass the check (the later rename fails on a non-empty folder but would
replace an empty one), and an overwrite moves the old folder aside first, leaving a moment
with no output in place.

Staging names are ``.<target>.wageubn-sim-partial.<host>+<pid>+<random>``: a killed run
leaves one behind under that name, and the next write to the same target removes those of
processes of this host that no longer run.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path

STAGE_TAG = "wageubn-sim-partial"
# A test hook: the process kills itself (SIGKILL) when it reaches the named point of a write.
KILL_AT_ENV = "WAGEUBN_SIM_TEST_KILL_AT"


class OutputError(OSError):
    """An output cannot be written (a parent is a file, no permission, the disk is full...);
    the message names the path, the cause and the fix."""

    def __str__(self):
        return self.strerror or super().__str__()


def check_target(path) -> Path:
    """``path`` as a Path, refusing names that are no output: '.', '..', a file system root,
    or a folder that holds the current folder (replacing it would remove the caller's work)."""
    path = Path(path)
    if path.name in ("", ".", ".."):
        raise ValueError(f"output {str(path)!r} names no new file or folder; give a path such "
                         "as out/bundle")
    resolved = path.resolve()
    if Path.cwd().resolve().is_relative_to(resolved):
        raise ValueError(f"output {path} is the current folder or holds it; choose another path")
    return path


def refuse_existing(path, overwrite: bool) -> Path:
    """``path`` (checked by `check_target`) as a Path; FileExistsError if it exists and
    ``overwrite`` is off. Writers check again when they publish (atomically); callers call
    this first too, to fail before the work."""
    path = check_target(path)
    if os.path.lexists(path) and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (CLI: --force) to replace it")
    return path


@contextlib.contextmanager
def staged_folder(out_dir, overwrite: bool):
    """Yield an empty staging folder beside ``out_dir``; on success it is published as
    ``out_dir`` (replacing an old one only with ``overwrite``), on error it is removed."""
    out_dir = refuse_existing(out_dir, overwrite)
    with _output_errors(out_dir):
        _make_parent(out_dir)
        _remove_stale_stages(out_dir)
        tmp = Path(tempfile.mkdtemp(prefix=_stage_prefix(out_dir), dir=out_dir.parent))
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; the result is an ordinary folder
    _crash_point("started")
    try:
        with _output_errors(out_dir):
            yield tmp
            _sync_tree(tmp)
            _crash_point("staged")
            _publish(tmp, out_dir, overwrite)
    except BaseException:
        _remove(tmp)
        raise


def write_folder_atomically(out_dir, files: dict, overwrite: bool) -> Path:
    """Write ``files`` ({relative path: bytes}) as the folder ``out_dir``, published whole."""
    with staged_folder(out_dir, overwrite) as tmp:
        for rel, data in sorted(files.items()):
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    return Path(out_dir)


def write_file_atomically(path, data: bytes, overwrite: bool) -> Path:
    """Write ``data`` as the file ``path``: written and fsynced beside it under a staging name,
    then published (replacing an existing file only with ``overwrite``)."""
    path = refuse_existing(path, overwrite)
    with _output_errors(path):
        _make_parent(path)
        _remove_stale_stages(path)
        fd, tmp = tempfile.mkstemp(prefix=_stage_prefix(path), dir=path.parent)
    _crash_point("started")
    try:
        with _output_errors(path):
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; the result is an ordinary file
            _crash_point("staged")
            _publish(Path(tmp), path, overwrite)
    except BaseException:
        _remove(Path(tmp))
        raise
    return path


# ---- publishing ---------------------------------------------------------------------------

def _publish(tmp: Path, target: Path, overwrite: bool) -> None:
    if overwrite and os.path.lexists(target):
        old = "a symbolic link" if target.is_symlink() else "a folder" if target.is_dir() else "a file"
        new = "a folder" if tmp.is_dir() else "a file"
        if old != new:
            raise OutputError(errno.EEXIST, f"{target} is {old} and the output is {new}: it is not "
                              "replaced; remove it yourself or choose another path")
    if not overwrite:
        _publish_new(tmp, target)
    else:
        while True:
            try:
                if not _system_rename(tmp, target, "exchange"):
                    _replace_without_exchange(tmp, target)
                    break
            except FileNotFoundError:  # nothing to replace
                try:
                    _publish_new(tmp, target)
                    break
                except FileExistsError:  # it appeared meanwhile: exchange with it
                    continue
            _crash_point("exchanged")
            _remove(tmp)  # now the old output
            break
    _sync_path(target.parent)


def _publish_new(tmp: Path, target: Path) -> None:
    try:
        if _system_rename(tmp, target, "noreplace"):
            return
        if tmp.is_dir():  # no atomic no-replace rename for folders here: check, then rename
            if os.path.lexists(target):
                raise FileExistsError(errno.EEXIST, "exists", str(target))
            os.rename(tmp, target)
        else:
            os.link(tmp, target)  # fails if target exists
            os.unlink(tmp)
    except FileExistsError:
        raise FileExistsError(f"{target} exists (written meanwhile by another process?); pass "
                              "overwrite=True (CLI: --force) to replace it") from None


def _replace_without_exchange(tmp: Path, target: Path) -> None:
    if not tmp.is_dir():
        os.replace(tmp, target)  # atomic for files
        return
    aside = Path(tempfile.mkdtemp(prefix=_stage_prefix(target), dir=target.parent))
    os.rename(target, aside / "old")  # the documented window: no output in place until the next line
    os.rename(tmp, target)
    _remove(aside)


def _load_rename():
    """(function, {"noreplace": flag, "exchange": flag}) of this system's flagged rename, or None."""
    libc_name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        if sys.platform.startswith("linux"):
            fn = libc.renameat2
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            at_fdcwd = -100

            def rename(src, dst, flag):
                return fn(at_fdcwd, src, at_fdcwd, dst, flag)
            return rename, {"noreplace": 1, "exchange": 2}  # RENAME_NOREPLACE, RENAME_EXCHANGE
        if sys.platform == "darwin":
            fn = libc.renamex_np
            fn.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint]
            return fn, {"noreplace": 4, "exchange": 2}  # RENAME_EXCL, RENAME_SWAP
    except (OSError, AttributeError):
        pass
    return None


_RENAME = _load_rename()
_UNSUPPORTED = {errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP}


def _system_rename(src: Path, dst: Path, how: str) -> bool:
    """Rename with the system's no-replace or exchange flag; False where it has none. Raises
    FileExistsError (no-replace onto an existing path) and FileNotFoundError (exchange with a
    missing one) like any OSError."""
    if _RENAME is None:
        return False
    rename, flags = _RENAME
    if rename(os.fsencode(src), os.fsencode(dst), flags[how]) == 0:
        return True
    code = ctypes.get_errno()
    if code in _UNSUPPORTED:
        return False
    raise OSError(code, os.strerror(code), str(dst))


# ---- helpers ------------------------------------------------------------------------------

def _stage_prefix(target: Path) -> str:
    return f".{target.name}.{STAGE_TAG}.{socket.gethostname()}+{os.getpid()}+"


def _remove_stale_stages(target: Path) -> None:
    """Remove the staging entries of ``target`` left by processes of this host that are gone."""
    head = f".{target.name}.{STAGE_TAG}.{socket.gethostname()}+"
    with contextlib.suppress(OSError):
        for entry in target.parent.iterdir():
            if not entry.name.startswith(head):
                continue
            pid = entry.name[len(head):].split("+")[0]
            if pid.isdigit() and not _process_runs(int(pid)):
                _remove(entry)


def _process_runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _make_parent(path: Path) -> None:
    parent = path.parent
    for ancestor in [parent, *parent.parents]:
        if os.path.lexists(ancestor) and not ancestor.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "a parent is a file, not a folder", str(ancestor))
    parent.mkdir(parents=True, exist_ok=True)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _sync_tree(root: Path) -> None:
    """fsync every file and folder below ``root``, and ``root``: what a rename publishes is on
    the disk first."""
    for folder, _, files in os.walk(root):
        for name in files:
            _sync_path(Path(folder) / name)
        _sync_path(Path(folder))


def _sync_path(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as err:  # some file systems cannot fsync a folder
        if err.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _crash_point(name: str) -> None:
    if os.environ.get(KILL_AT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


_FIXES = {
    errno.ENOSPC: "free some space or choose another path",
    errno.EDQUOT: "free some space or choose another path",
    errno.EFBIG: "the file system refuses a file this large; choose another path",
    errno.EACCES: "choose a folder you may write to",
    errno.EPERM: "choose a folder you may write to",
    errno.EROFS: "the file system is read-only; choose another path",
    errno.ENOTDIR: "a parent of the path is a file, not a folder; choose another path",
    errno.ENAMETOOLONG: "choose a shorter path",
}


@contextlib.contextmanager
def _output_errors(target: Path):
    """OSErrors of writing (not the refusal to replace) as OutputError naming the target."""
    try:
        yield
    except (FileExistsError, OutputError):
        raise
    except OSError as err:
        fix = _FIXES.get(err.errno, "check the path and try again")
        where = f" ({err.filename})" if err.filename and str(err.filename) != str(target) else ""
        raise OutputError(err.errno, f"cannot write {target}: {err.strerror or err}{where}; {fix}") from None
