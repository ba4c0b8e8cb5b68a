"""Writing outputs atomically: a folder's files land together, or none do; a file is whole or
absent. Nothing existing is replaced unless asked."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


def refuse_existing(path, overwrite: bool) -> Path:
    """``path`` as a Path; FileExistsError if it exists and ``overwrite`` is off. Writers call
    it again when they write; callers call it first too, to fail before the work."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (CLI: --force) to replace it")
    return path


@contextlib.contextmanager
def staged_folder(out_dir, overwrite: bool):
    """Yield an empty staging folder beside ``out_dir``; on success it becomes ``out_dir``
    (replacing an old one only with ``overwrite``), on error it is removed."""
    out_dir = refuse_existing(out_dir, overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the result is an ordinary folder
    try:
        yield tmp
        _move_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _move_into_place(tmp: Path, out_dir: Path) -> None:
    if out_dir.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old.", dir=out_dir.parent))
        os.replace(out_dir, trash / "old")
        os.replace(tmp, out_dir)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, out_dir)


def write_folder_atomically(out_dir, files: dict, overwrite: bool) -> Path:
    """Write ``files`` ({relative path: bytes}) as the folder ``out_dir``.

    The folder is built beside its destination and renamed into place, so a crash or an
    error leaves either the old folder or the new one, never a mix. An existing folder is
    replaced only with ``overwrite``.
    """
    with staged_folder(out_dir, overwrite) as tmp:
        for rel, data in sorted(files.items()):
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    return Path(out_dir)


def write_file_atomically(path, data: bytes, overwrite: bool) -> Path:
    """Write ``data`` as the file ``path``: written beside it under a temporary name, then
    renamed into place. An existing file is replaced only with ``overwrite``."""
    path = refuse_existing(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; the result is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
