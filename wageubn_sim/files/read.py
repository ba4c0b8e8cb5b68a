"""Bounded readers for the files a user hands us: JSON, `.npy`, members of `.npz`.

Every file may be truncated, huge, forged or made to hang a parser, so each reader
* opens regular files only (a FIFO or a device would block or never end);
* checks what a file declares (a size, a shape, a dtype) against the file's real size and the
  caller's expectation before it allocates anything, and reads in time linear in the file;
* never loads a pickle (object arrays are refused, not loaded);
* raises `UnreadableFile` (a ValueError) that names the file, says what it is not, and what
  to do, in our own words (numpy's and torch's advice to load pickles never reaches a user).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import stat
import threading
import zipfile
import zlib
from pathlib import Path

import numpy as np

MAX_JSON_BYTES = 64 << 20  # a graph.json or manifest.json of thousands of layers is a few MiB
MAX_NPY_HEADER = 10_000  # numpy's own limit for a trusted header
DEFLATE_MAX_RATIO = 1032  # deflate expands at most this much (RFC 1951's longest match per bit)
INTEGER_KINDS = "iu"


class UnreadableFile(ValueError):
    """A file that is not what it must be: the message names it, what it is not, and the fix."""


def _open_regular(path, what: str):
    """The regular file ``path`` opened for binary reading; opened without blocking, so that a
    FIFO or a device is refused instead of waited on."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path} does not exist") from None
    except OSError as err:
        raise UnreadableFile(f"{what} {path} cannot be opened: {err.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnreadableFile(f"{what} {path} is not a regular file")
    return os.fdopen(fd, "rb", buffering=0)


def read_regular_file(path, what: str, max_bytes: int) -> bytes:
    """The bytes of the regular file ``path`` (at most ``max_bytes``)."""
    path = Path(path)
    with _open_regular(path, what) as fh:
        info = os.fstat(fh.fileno())
        if info.st_size > max_bytes:
            raise UnreadableFile(f"{what} {path} has {info.st_size} bytes, more than the "
                                 f"{max_bytes} such a file can need; is it the right file?")
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:  # grew while we read
        raise UnreadableFile(f"{what} {path} is larger than {max_bytes} bytes")
    return data


def read_file_range(path, what: str, offset: int, size: int) -> bytes:
    """``size`` bytes at ``offset`` of the regular file ``path``; a shorter file is refused."""
    path = Path(path)
    with _open_regular(path, what) as fh:
        length = os.fstat(fh.fileno()).st_size
        if offset + size > length:
            raise UnreadableFile(f"{what} {path} is truncated: {length} bytes, but {size} are "
                                 f"needed at offset {offset}")
        fh.seek(offset)
        data = fh.read(size)
    if len(data) != size:  # shrank while we read
        raise UnreadableFile(f"{what} {path} is truncated")
    return data


def _refuse_constant(name):
    raise ValueError(f"{name} is not a JSON number")


class DuplicateKey(ValueError):
    """A JSON object names one key twice: readers differ on which copy counts, so neither does."""


def _unique_keys(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKey(f"the key {key!r} appears twice in one object")
        out[key] = value
    return out


def parse_json(text: str, what: str):
    """Strict JSON: no NaN or Infinity, no key twice in an object (a reader that keeps the first
    copy and one that keeps the last would read two different files)."""
    try:
        return json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=_unique_keys)
    except DuplicateKey as err:
        raise UnreadableFile(f"{what}: {err}; remove the duplicate (a file edited by hand?)") from None
    except RecursionError:
        raise UnreadableFile(f"{what} nests its JSON too deeply") from None
    except ValueError as err:  # JSONDecodeError, an oversized integer, NaN
        raise UnreadableFile(f"{what} is not valid JSON: {err}") from None


def read_json(path, what: str, max_bytes: int = MAX_JSON_BYTES):
    """Parse the JSON file ``path`` (`parse_json`), bounded in size and depth."""
    data = read_regular_file(path, what, max_bytes)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UnreadableFile(f"{what} {path} is not UTF-8 text") from None
    return parse_json(text, f"{what} {path}")


def inside_folder(folder, name: str, what: str) -> Path:
    """``folder / name`` where that path, after every symbolic link is resolved, still lies in
    ``folder`` (resolved too): a link to a file beside it is followed, one that leads out of the
    folder (``w.bin -> ../secret``, ``-> /etc/passwd``) is refused."""
    folder = Path(folder)
    path = folder / name
    real, home = os.path.realpath(path), os.path.realpath(folder)
    if os.path.commonpath([real, home]) != home or real == home:
        raise UnreadableFile(f"{what} {path} resolves to {real}, outside the folder {home}; keep "
                             "the file itself in that folder (not a link that leads out of it)")
    return path


# ---- .npy -------------------------------------------------------------------------------

def _npy_header(fh, what: str, kinds: str):
    """(dtype, shape, fortran_order, data bytes) from an .npy stream positioned at its start."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(fh, max_header_size=MAX_NPY_HEADER)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(fh, max_header_size=MAX_NPY_HEADER)
        else:
            raise ValueError(f"npy format version {version} is not read here (1.0 and 2.0 are)")
    except (ValueError, OSError, SyntaxError, TypeError, EOFError) as err:
        raise UnreadableFile(f"{what} is not an .npy array file ({their_reason(err)})") from None
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise UnreadableFile(f"{what} holds {'Python objects' if dtype.hasobject else 'records'} "
                             f"({dtype}), not numbers; this tool never loads pickled objects. "
                             "Save a plain numeric array (np.save of an integer or float array)")
    if dtype.kind not in kinds:
        wanted = "integers" if kinds == INTEGER_KINDS else "integers or floats"
        raise UnreadableFile(f"{what} holds {dtype} values, not {wanted}")
    if dtype.kind == "f" and dtype.itemsize > 8:
        raise UnreadableFile(f"{what} holds {dtype}, wider than float64: its values would be "
                             "rounded; convert it to float64 yourself first")
    if any(not isinstance(d, int) or d < 0 for d in shape):
        raise UnreadableFile(f"{what} declares the shape {shape}")
    nbytes = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
    return dtype, tuple(shape), fortran, nbytes


def _check_shape(what, shape, expect_shape):
    if expect_shape is not None and tuple(shape) != tuple(expect_shape):
        raise UnreadableFile(f"{what} has shape {shape}, expected {tuple(expect_shape)}")


def _array_from(buffer, dtype, shape, fortran) -> np.ndarray:
    flat = np.frombuffer(buffer, dtype=dtype)
    array = flat.reshape(shape[::-1]).transpose() if fortran else flat.reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True)  # native, writable, own memory


def parse_npy(data: bytes, what: str, kinds: str = INTEGER_KINDS, expect_shape=None) -> np.ndarray:
    """An array from .npy bytes; the header's size must equal the bytes that follow it."""
    import io
    layout = _checked_layout(io.BytesIO(data), len(data), what, kinds, expect_shape)
    return _array_from(memoryview(data)[layout.offset:], layout.dtype, layout.shape, layout.fortran)


@dataclasses.dataclass(frozen=True)
class NpyLayout:
    """What an .npy header declares, checked against the bytes that hold the data."""
    dtype: np.dtype
    shape: tuple
    fortran: bool
    nbytes: int  # the data's bytes
    offset: int  # where the data starts (in the file, or in the archive member)


def _checked_layout(fh, size: int, label: str, kinds: str, expect_shape=None) -> NpyLayout:
    """The header of the .npy stream ``fh`` (at its start) of ``size`` bytes in all; ``fh`` is
    left where the data starts."""
    dtype, shape, fortran, nbytes = _npy_header(fh, label, kinds)
    _check_shape(label, shape, expect_shape)
    offset = fh.tell()
    if size - offset != nbytes:
        raise UnreadableFile(f"{label} declares {shape} {dtype} ({nbytes} bytes) but holds "
                             f"{size - offset} bytes of data: truncated or padded")
    return NpyLayout(dtype, shape, fortran, nbytes, offset)


def npy_layout(path, what: str, kinds: str = INTEGER_KINDS, expect_shape=None) -> NpyLayout:
    """The layout of the .npy file ``path``, its header checked against the file's size; no
    data is read (`numpy.memmap` can map it from ``offset``)."""
    with _open_regular(path, what) as fh:
        return _checked_layout(fh, os.fstat(fh.fileno()).st_size, f"{what} {path}", kinds, expect_shape)


def read_npy(path, what: str, kinds: str = INTEGER_KINDS, expect_shape=None) -> np.ndarray:
    """An array from the .npy file ``path``, its header checked against the file's size
    before the data is read."""
    with _open_regular(path, what) as fh:
        layout = _checked_layout(fh, os.fstat(fh.fileno()).st_size, f"{what} {path}", kinds, expect_shape)
        buffer = bytearray(layout.nbytes)
        if fh.readinto(buffer) != layout.nbytes:
            raise UnreadableFile(f"{what} {path} changed while it was read")
    return _array_from(buffer, layout.dtype, layout.shape, layout.fortran)


# ---- .npz -------------------------------------------------------------------------------

def npz_members(path, what: str) -> list:
    """The array names in the .npz ``path`` (members ``NAME.npy``), without reading them."""
    with _open_zip(path, what) as zf:
        return [n[:-4] for n in zf.namelist() if n.endswith(".npy")]


_ZIP_ERRORS = (zipfile.BadZipFile, OSError, EOFError, RuntimeError, zlib.error)


def npz_member_layout(zf, path, what: str, name: str, kinds: str = INTEGER_KINDS) -> NpyLayout:
    """The layout of array ``name`` in the open .npz ``zf``: the zip's sizes honest (stored, or
    deflated within deflate's largest ratio) and the .npy header's size equal to the member's.
    ``offset`` counts from the member's start."""
    label = f"{what} {path}, array {name!r}"
    try:
        info = zf.getinfo(f"{name}.npy")
    except KeyError:
        raise UnreadableFile(f"{what} {path} has no array {name!r}") from None
    if info.compress_type == zipfile.ZIP_STORED:
        honest = info.file_size == info.compress_size
    elif info.compress_type == zipfile.ZIP_DEFLATED:
        honest = info.file_size <= DEFLATE_MAX_RATIO * info.compress_size + 64
    else:
        raise UnreadableFile(f"{label} uses zip compression {info.compress_type}; "
                             "save it with np.savez or np.savez_compressed")
    if not honest:
        raise UnreadableFile(f"{label} declares {info.file_size} bytes from "
                             f"{info.compress_size} stored: a forged archive")
    try:
        with zf.open(info) as fh:
            return _checked_layout(fh, info.file_size, label, kinds)
    except _ZIP_ERRORS as err:
        raise UnreadableFile(f"{label} is damaged ({their_reason(err)})") from None


def read_npz_member_bytes(zf, path, what: str, name: str, offset: int, size: int) -> bytes:
    """``size`` bytes at ``offset`` of array ``name``'s member (a compressed member is
    decompressed up to there); a short or damaged member is refused."""
    label = f"{what} {path}, array {name!r}"
    try:
        with zf.open(f"{name}.npy") as fh:
            fh.seek(offset)
            data = fh.read(size)
    except _ZIP_ERRORS as err:
        raise UnreadableFile(f"{label} is damaged ({their_reason(err)})") from None
    if len(data) != size:
        raise UnreadableFile(f"{label} is truncated")
    return data


class NpzMemberStream:
    """Ranges of one .npz member read in turn from one open handle: a compressed member is
    inflated once for ranges read in order (a fresh open per range would inflate everything
    before each one again: quadratic in the member's size). Reading back starts over. The
    handle is not pickled: a copy sent to another process opens its own."""

    def __init__(self, path, what: str, name: str):
        self.path, self.what, self.name = Path(path), what, name
        self._open = None  # (the regular file, the ZipFile, the member's handle)
        self._lock = threading.Lock()

    def read(self, offset: int, size: int) -> bytes:
        label = f"{self.what} {self.path}, array {self.name!r}"
        with self._lock:
            try:
                if self._open is None:
                    fh = _open_regular(self.path, self.what)
                    try:
                        zf = zipfile.ZipFile(fh)
                        self._open = (fh, zf, zf.open(f"{self.name}.npy"))
                    except BaseException:
                        fh.close()
                        raise
                member = self._open[2]
                member.seek(offset)
                data = member.read(size)
            except _ZIP_ERRORS as err:
                self.close()
                raise UnreadableFile(f"{label} is damaged ({their_reason(err)})") from None
            except KeyError:
                self.close()
                raise UnreadableFile(f"{label} is gone from the archive") from None
        if len(data) != size:
            raise UnreadableFile(f"{label} is truncated")
        return data

    def close(self) -> None:
        if self._open is not None:
            for handle in reversed(self._open):
                handle.close()
            self._open = None

    def __del__(self):
        self.close()

    def __getstate__(self):
        return {"path": self.path, "what": self.what, "name": self.name}

    def __setstate__(self, state):
        self.__init__(state["path"], state["what"], state["name"])


def read_npz(path, what: str, names=None, kinds: str = INTEGER_KINDS) -> dict:
    """{name: array} for ``names`` (default: every array) of the .npz ``path``. Only those
    members are read, each after its sizes (the zip's and the .npy header's) agree."""
    out = {}
    with _open_zip(path, what) as zf:
        for name in (names if names is not None else
                     [n[:-4] for n in zf.namelist() if n.endswith(".npy")]):
            layout = npz_member_layout(zf, path, what, name, kinds)
            buffer = read_npz_member_bytes(zf, path, what, name, layout.offset, layout.nbytes)
            out[name] = _array_from(buffer, layout.dtype, layout.shape, layout.fortran)
    return out


@contextlib.contextmanager
def _open_zip(path, what):
    with _open_regular(path, what) as fh:
        try:
            zf = zipfile.ZipFile(fh)  # does not close fh: the with above does
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
            raise UnreadableFile(f"{what} {path} is not an .npz archive ({their_reason(err)})") from None
        with zf:
            yield zf


# Libraries' advice to trust a file by loading its pickles; never passed on to a user.
_UNSAFE_ADVICE = ("allow_pickle", "weights_only", "pickle", "trust")


def their_reason(err) -> str:
    """The first line of a library's error message, unless it advises loading pickles."""
    lines = str(err).strip().splitlines()
    text = lines[0] if lines else type(err).__name__
    if any(word in text.lower() for word in _UNSAFE_ADVICE):
        return type(err).__name__
    return text
