"""Datasets read in pieces: any sample range of a dataset is read on its own, so that a run
holds one batch at a time and a shard can be read by whichever process runs it.

A source has ``len(source)`` samples of ``sample_shape`` and ``read(start, stop)`` ->
(inputs, labels or None). Sources hold paths, never open files, so they travel to Dask
workers (which must see the same paths). Every file is read by the bounded readers of
`files.read`: an .npy header is checked against the file's size before a slice is mapped.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from ..files.read import (NpzMemberStream, UnreadableFile, _open_regular, _open_zip, npy_layout,
                          npz_member_layout, read_npy, read_npz)

INPUT_KINDS = "iuf"  # inputs: floats, or integers of the graph's input format
LABEL_KINDS = "iu"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
MAX_IMAGE_PIXELS = 1 << 26  # 8192 x 8192: a larger image is refused (a decompression bomb?)


class DataSource:
    """``len(self)`` samples of ``sample_shape``; ``read(start, stop)`` -> (x, labels or None)."""

    sample_shape: tuple = ()
    has_labels: bool = False

    def __len__(self) -> int:
        raise NotImplementedError

    def read(self, start: int, stop: int):
        raise NotImplementedError

    def describe(self) -> str:
        return type(self).__name__


class ArraySource(DataSource):
    """An array in memory (and its labels), as the API's ``audit(graph, x)`` gives it."""

    def __init__(self, x, labels=None):
        self.x = np.asarray(x)
        if self.x.ndim < 1:
            raise ValueError("inputs need a batch axis (N first)")
        self.labels = None if labels is None else np.asarray(labels)
        if self.labels is not None and self.labels.shape != (len(self.x),):
            raise ValueError(f"labels of shape {self.labels.shape} for {len(self.x)} inputs")
        self.sample_shape, self.has_labels = tuple(self.x.shape[1:]), labels is not None

    def __len__(self):
        return len(self.x)

    def read(self, start, stop):
        return self.x[start:stop], None if self.labels is None else self.labels[start:stop]

    def describe(self):
        return f"an array of {len(self)} samples"


def _sliceable(layout, what):
    """A layout whose samples (N first) are consecutive slices."""
    if layout.fortran and len(layout.shape) > 1:
        raise UnreadableFile(f"{what} is stored in Fortran order; save it in C order "
                             "(np.save(path, np.ascontiguousarray(x)))")
    if not layout.shape:
        raise UnreadableFile(f"{what} holds a scalar, not samples (N first)")
    return layout


class NpyFileSource(DataSource):
    """An .npy file of N samples (N first), mapped slice by slice."""

    def __init__(self, path, labels=None, kinds=INPUT_KINDS):
        self.path = Path(path)
        layout = _sliceable(npy_layout(self.path, "data file", kinds), f"data file {self.path}")
        self.dtype, self.offset = layout.dtype, layout.offset
        self.count, self.sample_shape = layout.shape[0], tuple(layout.shape[1:])
        self.labels = None
        if labels is not None:
            self.labels = read_npy(labels, "labels file", LABEL_KINDS, expect_shape=(self.count,))
        self.has_labels = self.labels is not None

    def __len__(self):
        return self.count

    def read(self, start, stop):
        if stop <= start:
            return np.zeros((0, *self.sample_shape), self.dtype.newbyteorder("=")), None
        mapped = np.memmap(self.path, self.dtype, "r", self.offset, (self.count, *self.sample_shape))
        x = np.array(mapped[start:stop], dtype=self.dtype.newbyteorder("="))  # a copy: the map closes
        del mapped
        return x, None if self.labels is None else self.labels[start:stop]

    def describe(self):
        return f"{self.path} ({self.count} samples)"


class NpzArraySource(DataSource):
    """One array of an .npz (stored or compressed), read slice by slice from the archive."""

    def __init__(self, path, member: str | None = None, labels: str | None = None):
        self.path = Path(path)
        with _open_zip(self.path, "data file") as zf:
            arrays = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
            if member is None:
                candidates = [n for n in arrays if n not in ("labels", "y")]
                if len(candidates) != 1:
                    raise UnreadableFile(f"data file {self.path} holds arrays {arrays[:6]}; keep one "
                                         "array of inputs (and optionally 'labels')")
                member = candidates[0]
                labels = labels or next((n for n in ("labels", "y") if n in arrays), None)
            self.member, self.label_member = member, labels
            self.stream = NpzMemberStream(self.path, "data file", member)
            layout = _sliceable(npz_member_layout(zf, self.path, "data file", member, INPUT_KINDS),
                                f"data file {self.path}, array {member!r}")
            self.dtype, self.offset = layout.dtype, layout.offset
            self.count, self.sample_shape = layout.shape[0], tuple(layout.shape[1:])
            self.labels = None
            if labels is not None:
                self.labels = read_npz(self.path, "data file", [labels], LABEL_KINDS)[labels].astype(np.int64)
                if self.labels.shape != (self.count,):
                    raise UnreadableFile(f"data file {self.path}: labels of shape {self.labels.shape} "
                                         f"for {self.count} samples")
        self.has_labels = self.labels is not None

    def __len__(self):
        return self.count

    def read(self, start, stop):
        row = math.prod(self.sample_shape) * self.dtype.itemsize
        data = self.stream.read(self.offset + start * row, (stop - start) * row)
        x = np.frombuffer(data, self.dtype).reshape(stop - start, *self.sample_shape)
        return x.astype(self.dtype.newbyteorder("=")), \
            None if self.labels is None else self.labels[start:stop]

    def describe(self):
        return f"{self.path}, array {self.member!r} ({self.count} samples)"


class NpyFolderSource(DataSource):
    """A folder of .npy files in name order, each a batch (N first) or, where the file's
    shape is ``sample_shape``, one sample."""

    def __init__(self, path, sample_shape=None):
        self.path = Path(path)
        files = sorted(p for p in self.path.iterdir() if p.suffix == ".npy")
        if not files:
            raise UnreadableFile(f"data folder {self.path} holds no .npy files")
        self.parts, counts, shapes = [], [], set()
        for f in files:
            part = NpyFileSource(f)
            single = sample_shape is not None and (len(part), *part.sample_shape) == tuple(sample_shape)
            self.parts.append((part, single))
            counts.append(1 if single else len(part))
            shapes.add(tuple(sample_shape) if single else part.sample_shape)
        if len(shapes) != 1:
            raise UnreadableFile(f"data folder {self.path}: its files hold samples of shapes "
                                 f"{sorted(shapes)[:4]}; give every file the same sample shape")
        self.sample_shape = shapes.pop()
        self.ends = np.cumsum(counts).tolist()

    def __len__(self):
        return self.ends[-1]

    def read(self, start, stop):
        pieces, begin = [], 0
        for (part, single), end in zip(self.parts, self.ends):
            lo, hi = max(start, begin), min(stop, end)
            if lo < hi:
                pieces.append(part.read(0, len(part))[0][None] if single else part.read(lo - begin, hi - begin)[0])
            begin = end
        if not pieces:
            return np.zeros((0, *self.sample_shape)), None
        return np.concatenate(pieces), None

    def describe(self):
        return f"{self.path} ({len(self.parts)} .npy files, {len(self)} samples)"


class ImageFolderSource(DataSource):
    """An ImageFolder (one subfolder per class, in name order; labels are class indices),
    each image decoded and preprocessed as torchvision's Resize, CenterCrop, ToTensor and
    Normalize do (`Preprocess`)."""

    def __init__(self, path, preprocess):
        self.path, self.preprocess = Path(path), preprocess
        classes = sorted(p.name for p in self.path.iterdir() if p.is_dir())
        if not classes:
            raise UnreadableFile(f"image folder {self.path} has no class subfolders (ImageFolder: "
                                 "ROOT/CLASS/IMAGE)")
        self.classes = classes
        self.files, labels = [], []
        for k, name in enumerate(classes):
            for f in sorted((self.path / name).iterdir()):
                if f.suffix.lower() in IMAGE_SUFFIXES:
                    self.files.append(f"{name}/{f.name}")
                    labels.append(k)
        if not self.files:
            raise UnreadableFile(f"image folder {self.path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        self.labels = np.array(labels, np.int64)
        self.sample_shape, self.has_labels = preprocess.shape, True

    def __len__(self):
        return len(self.files)

    def read(self, start, stop):
        x = np.stack([self.preprocess(self.path / f) for f in self.files[start:stop]]) \
            if stop > start else np.zeros((0, *self.sample_shape))
        return x, self.labels[start:stop]

    def describe(self):
        return f"{self.path} ({len(self.files)} images in {len(self.classes)} classes)"


class Preprocess:
    """torchvision's ``Resize(resize)`` (the shorter side, bilinear), ``CenterCrop(crop)``,
    ``ToTensor()`` and ``Normalize(mean, std)``, on Pillow and float64 numpy: RGB, or L for
    one channel. Not bit-identical to torchvision's float32 arithmetic; the graph's input
    quantizer then rounds every value onto its grid."""

    def __init__(self, channels: int, resize: int | None, crop: int, mean=None, std=None):
        if channels not in (1, 3):
            raise ValueError(f"images have 1 or 3 channels, the graph's input has {channels}")
        self.channels, self.resize, self.crop = channels, resize, crop
        self.mean = np.asarray(mean if mean is not None else [0.0] * channels, np.float64)
        self.std = np.asarray(std if std is not None else [1.0] * channels, np.float64)
        for option, values in (("--mean", self.mean), ("--std", self.std)):
            if values.shape != (channels,) or not np.all(np.isfinite(values)):
                raise ValueError(f"{option} {values.tolist()}: give {channels} finite numbers, one "
                                 "per channel")
        if np.any(self.std <= 0):
            raise ValueError(f"--std {self.std.tolist()}: each standard deviation must be above 0")
        side = math.isqrt(MAX_IMAGE_PIXELS)
        for option, value in (("--crop", crop), ("--resize", resize)):
            if value is not None and value > side:
                raise ValueError(f"{option} {value}: images of more than {side} pixels a side are "
                                 f"refused here ({MAX_IMAGE_PIXELS} pixels at most)")
        if resize is not None and resize < crop:
            raise ValueError(f"--resize {resize} is smaller than --crop {crop}: every image would be "
                             "too small to crop")
        self.shape = (channels, crop, crop)

    def __call__(self, path) -> np.ndarray:
        from PIL import Image
        try:
            with _open_regular(path, "image") as fh, Image.open(fh) as image:
                if image.size[0] * image.size[1] > MAX_IMAGE_PIXELS:  # before decoding a pixel
                    raise ValueError(f"{image.size[0]}x{image.size[1]} pixels, more than the "
                                     f"{MAX_IMAGE_PIXELS} an image may have here")
                image = image.convert("RGB" if self.channels == 3 else "L")
                if self.resize is not None:
                    w, h = image.size
                    scale = self.resize / min(w, h)
                    size = (max(1, round(w * scale)), max(1, round(h * scale)))
                    if size[0] * size[1] > MAX_IMAGE_PIXELS:  # a long, narrow image
                        raise ValueError(f"--resize {self.resize} makes this {w}x{h} image "
                                         f"{size[0]}x{size[1]}, more than {MAX_IMAGE_PIXELS} pixels")
                    image = image.resize(size, Image.BILINEAR)
                w, h = image.size
                if w < self.crop or h < self.crop:
                    raise ValueError(f"{w}x{h} is smaller than the {self.crop}x{self.crop} crop")
                left, top = int(round((w - self.crop) / 2.0)), int(round((h - self.crop) / 2.0))
                image = image.crop((left, top, left + self.crop, top + self.crop))
                pixels = np.asarray(image, dtype=np.float64) / 255.0
        except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as err:
            raise UnreadableFile(f"image {path} cannot be used: {err}") from None
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        return ((pixels - self.mean) / self.std).transpose(2, 0, 1)


class BatchIterableSource:
    """Batches from a Python iterable (the API): read once, in order, not by range."""

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        for batch in self.batches:
            if isinstance(batch, tuple) and len(batch) == 2:
                yield np.asarray(batch[0]), None if batch[1] is None else np.asarray(batch[1])
            else:
                yield np.asarray(batch), None


def open_data(data, sample_shape=None, preprocess: Preprocess | None = None, labels=None):
    """A source for ``data``: an array (or (x, labels)), an iterable of batches, or a path: an
    .npy file (``labels``: an .npy of labels), an .npz (one array, optionally 'labels'), a
    folder of .npy files, or an ImageFolder (with ``preprocess``)."""
    if isinstance(data, DataSource):
        return data
    if isinstance(data, np.ndarray):
        return ArraySource(data, labels)
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], np.ndarray):
        return ArraySource(*data)
    if not isinstance(data, (str, os.PathLike)):
        return BatchIterableSource(data)
    path = Path(data)
    if not path.exists():
        raise FileNotFoundError(f"data {path} does not exist")
    if path.is_dir():
        if any(p.is_dir() for p in path.iterdir()):
            if preprocess is None:
                raise ValueError(f"{path} is an image folder: give the preprocessing (--crop, and "
                                 "--resize, --mean, --std as the network was trained)")
            return ImageFolderSource(path, preprocess)
        return NpyFolderSource(path, sample_shape)
    if path.suffix == ".npz":
        return NpzArraySource(path)
    return NpyFileSource(path, labels)
