"""Memory-image writers and readers: Verilog ``$readmemh``, Xilinx ``.coe``, Intel ``.mif``.

Every word is two's complement: ``lanes`` values of ``width`` bits packed with lane 0 in the
least significant bits (as FINN does), so the word is ``lanes * width`` bits wide and is written
as exactly ceil(word_width / 4) lowercase hex digits. The readers parse what the writers write
(and the usual variations: comments, blank lines, upper case) so that a test can show that each
file holds exactly the ``.npy`` values.
"""
from __future__ import annotations

import re

import numpy as np


def pack_words(values: np.ndarray, width: int, lanes: int) -> list[int]:
    """Flattened signed values -> words (Python ints), lane 0 in the LSBs; the last word is
    padded with zero lanes."""
    flat = [int(v) for v in np.asarray(values).reshape(-1)]
    lo, hi = -(1 << (width - 1)), (1 << (width - 1)) - 1
    if flat and (min(flat) < lo or max(flat) > hi):
        raise ValueError(f"a value does not fit {width} signed bits")
    mask = (1 << width) - 1
    flat += [0] * (-len(flat) % lanes)
    words = []
    for i in range(0, len(flat), lanes):
        word = 0
        for lane, v in enumerate(flat[i:i + lanes]):
            word |= (v & mask) << (lane * width)
        words.append(word)
    return words


def unpack_words(words: list[int], width: int, lanes: int, count: int) -> np.ndarray:
    mask, sign = (1 << width) - 1, 1 << (width - 1)
    values = []
    for word in words:
        for lane in range(lanes):
            v = (word >> (lane * width)) & mask
            values.append(v - (1 << width) if v & sign else v)
    return np.array(values[:count], dtype=np.int64)


def _digits(word_width: int) -> int:
    return -(-word_width // 4)


def write_readmemh(words, word_width, header: dict) -> str:
    lines = [f"// {k}={v}" for k, v in header.items()]
    d = _digits(word_width)
    lines += [f"{w:0{d}x}" for w in words]
    return "\n".join(lines) + "\n"


def write_coe(words, word_width, header: dict) -> str:
    lines = [f"; {k}={v}" for k, v in header.items()]
    d = _digits(word_width)
    lines.append("memory_initialization_radix=16;")
    lines.append("memory_initialization_vector=")
    body = [f"{w:0{d}x}" for w in words] or ["0" * d]
    lines += [v + ("," if i < len(body) - 1 else ";") for i, v in enumerate(body)]
    return "\n".join(lines) + "\n"


def write_mif(words, word_width, header: dict) -> str:
    lines = [f"-- {k}={v}" for k, v in header.items()]
    d = _digits(word_width)
    depth = max(len(words), 1)
    a = max(1, _digits(max(depth - 1, 1).bit_length()))
    lines += [f"DEPTH = {depth};", f"WIDTH = {word_width};", "ADDRESS_RADIX = HEX;",
              "DATA_RADIX = HEX;", "CONTENT BEGIN"]
    lines += [f"{i:0{a}x} : {w:0{d}x};" for i, w in enumerate(words or [0])]
    lines.append("END;")
    return "\n".join(lines) + "\n"


def read_readmemh(text: str) -> list[int]:
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    words, address = {}, 0
    for line in text.splitlines():
        for token in line.split("//")[0].split():
            if token.startswith("@"):
                address = int(token[1:], 16)
                continue
            words[address] = int(token.replace("_", ""), 16)
            address += 1
    return [words[i] for i in range(len(words))]


def read_coe(text: str) -> list[int]:
    text = "\n".join(line.split(";", 1)[0] if line.lstrip().startswith(";") else line
                     for line in text.splitlines())
    radix = int(re.search(r"memory_initialization_radix\s*=\s*(\d+)", text, re.I).group(1))
    vector = re.search(r"memory_initialization_vector\s*=(.*?);", text, re.I | re.S).group(1)
    return [int(v, radix) for v in re.split(r"[,\s]+", vector.strip()) if v]


def read_mif(text: str) -> list[int]:
    text = re.sub(r"--[^\n]*", "", text)
    text = re.sub(r"%.*?%", "", text, flags=re.S)
    content = re.search(r"CONTENT\s+BEGIN(.*?)END\s*;", text, re.I | re.S).group(1)
    words = {}
    for entry in content.split(";"):
        if ":" not in entry:
            continue
        addr, data = entry.split(":")
        values = [int(v, 16) for v in data.split()]
        addr = addr.strip()
        if addr.startswith("["):
            start, end = (int(v, 16) for v in addr.strip("[]").split(".."))
            for i in range(start, end + 1):
                words[i] = values[(i - start) % len(values)]
        else:
            for i, v in enumerate(values):
                words[int(addr, 16) + i] = v
    return [words[i] for i in range(len(words))]


WRITERS = {"readmemh": (".hex", write_readmemh), "coe": (".coe", write_coe), "mif": (".mif", write_mif)}
READERS = {"readmemh": read_readmemh, "coe": read_coe, "mif": read_mif}
