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


class ImageError(ValueError):
    """A memory image that breaks its format's rules, or does not hold the expected words; the
    message says where."""


# digits of each radix, '_' allowed between them as Verilog does (int() alone would also take
# signs, spaces and 0x prefixes)
_DIGITS = {2: re.compile(r"[01][01_]*"), 8: re.compile(r"[0-7][0-7_]*"),
           10: re.compile(r"[0-9][0-9_]*"), 16: re.compile(r"[0-9a-fA-F][0-9a-fA-F_]*")}


def _word(token: str, radix: int, word_width: int, line: int) -> int:
    if _DIGITS[radix].fullmatch(token) is None:
        raise ImageError(f"line {line}: {token[:40]!r} is not a base-{radix} word")
    value = int(token, radix)
    if value >> word_width:
        raise ImageError(f"line {line}: {token[:40]!r} is wider than the {word_width}-bit word")
    return value


def _collect(words: list, address: int, value: int, line: int) -> None:
    if address >= len(words):
        raise ImageError(f"line {line}: address {address:x} is beyond the {len(words)} words expected")
    if words[address] is not None:
        raise ImageError(f"line {line}: address {address:x} is written twice")
    words[address] = value


def _complete(words: list) -> list:
    if None in words:
        raise ImageError(f"word {words.index(None):x} (of {len(words)}) is never written")
    return words


# $readmemh: whitespace-separated hex words, // and /* */ comments, @address records. The
# pattern has no lazy or nested repetition (linear); a block comment is skipped by find.
_MEMH_TOKEN = re.compile(r"//[^\n]*|/\*|[^\s/]+|/|\n")


def read_readmemh(text: str, depth: int, word_width: int) -> list[int]:
    """Exactly ``depth`` words from a $readmemh file; each address written once."""
    words: list = [None] * depth
    pos, line, address = 0, 1, 0
    while (m := _MEMH_TOKEN.search(text, pos)) is not None:
        token, pos = m.group(), m.end()
        if token == "\n":
            line += 1
        elif token == "/*":
            end = text.find("*/", pos)
            if end < 0:
                raise ImageError(f"line {line}: a /* comment is never closed")
            line += text.count("\n", pos, end)
            pos = end + 2
        elif token == "/":
            raise ImageError(f"line {line}: a stray '/'")
        elif not token.startswith("//"):
            if token.startswith("@"):
                address = _word(token[1:], 16, 64, line)
            else:
                _collect(words, address, _word(token, 16, word_width, line), line)
                address += 1
    return _complete(words)


def _statements(text: str, comment: str | None = None):
    """(statement, line) pieces of ``text`` cut at every ';', lines that start with ``comment``
    dropped (a .coe's comment lines start with ';')."""
    pending, start = [], None
    for number, raw in enumerate(text.split("\n"), 1):
        if comment and raw.lstrip().startswith(comment):
            continue
        pieces = raw.split(";")
        for i, piece in enumerate(pieces):
            if piece.strip():
                pending.append(piece)
                start = start or number
            if i < len(pieces) - 1:  # a ';' follows this piece
                yield " ".join(pending).strip(), start or number
                pending, start = [], None
    if "".join(pending).strip():
        raise ImageError(f"line {start}: a statement does not end with ';'")


def read_coe(text: str, depth: int, word_width: int) -> list[int]:
    """Exactly ``depth`` words from a Xilinx .coe file: memory_initialization_radix (2, 10 or
    16), then memory_initialization_vector, the last keyword (anything after it is ignored, as
    UG896 says)."""
    radix = None
    for statement, line in _statements(text, ";"):
        key, eq, value = statement.partition("=")
        key = key.strip().lower()
        if not statement:
            continue
        if not eq:
            raise ImageError(f"line {line}: {statement[:40]!r} is not 'keyword = value'")
        if key == "memory_initialization_radix":
            if value.strip() not in ("2", "10", "16"):
                raise ImageError(f"line {line}: radix {value.strip()[:20]!r}; COE radixes are 2, 10 and 16")
            radix = int(value)
        elif key == "memory_initialization_vector":
            if radix is None:
                raise ImageError(f"line {line}: the vector comes before memory_initialization_radix")
            tokens = [t for t in re.split(r"[,\s]+", value) if t]
            if len(tokens) != depth:
                raise ImageError(f"line {line}: the vector holds {len(tokens)} words, {depth} expected")
            return [_word(t, radix, word_width, line) for t in tokens]  # what follows is ignored (UG896)
        else:
            raise ImageError(f"line {line}: unknown keyword {key[:40]!r}")
    raise ImageError("no memory_initialization_vector")


_MIF_RADIX = {"HEX": 16, "DEC": 10, "UNS": 10, "BIN": 2, "OCT": 8}


def _strip_mif_comments(text: str) -> str:
    """Drop '-- to end of line' and '% ... %' comments (keeping newlines, for line numbers).
    Linear: each search for the next marker runs again only once the last one is consumed."""
    out, pos = [], 0
    dash, pct = text.find("--"), text.find("%")
    while dash >= 0 or pct >= 0:
        if pct < 0 or 0 <= dash < pct:
            out.append(text[pos:dash])
            end = text.find("\n", dash)
            pos = len(text) if end < 0 else end
        else:
            out.append(text[pos:pct])
            end = text.find("%", pct + 1)
            if end < 0:
                raise ImageError(f"line {text.count(chr(10), 0, pct) + 1}: a % comment is never closed")
            out.append("\n" * text.count("\n", pct, end))
            pos = end + 1
        if 0 <= dash < pos:
            dash = text.find("--", pos)
        if 0 <= pct < pos:
            pct = text.find("%", pos)
    out.append(text[pos:])
    return "".join(out)


def _mif_value(token: str, radix_name: str, width: int, line: int) -> int:
    if radix_name == "DEC" and token.startswith("-"):  # signed decimal: two's complement
        value = _word(token[1:], 10, width, line)
        if value > 1 << (width - 1):
            raise ImageError(f"line {line}: {token[:40]!r} does not fit {width} signed bits")
        return (-value) & ((1 << width) - 1)
    return _word(token, _MIF_RADIX[radix_name], width, line)


def read_mif(text: str, depth: int, word_width: int) -> list[int]:
    """Exactly ``depth`` words from an Intel .mif file: DEPTH and WIDTH (which must be the
    expected ones), ADDRESS_RADIX, DATA_RADIX, then CONTENT BEGIN ... END; every address once."""
    header = {}
    words: list | None = None
    ended = False
    for statement, line in _statements(_strip_mif_comments(text)):
        upper = statement.upper()
        if ended:
            raise ImageError(f"line {line}: {statement[:40]!r} after END")
        if words is None and upper.startswith("CONTENT"):
            rest = statement.split(None, 2)
            if len(rest) < 2 or rest[1].upper() != "BEGIN":
                raise ImageError(f"line {line}: CONTENT is not followed by BEGIN")
            for key in ("DEPTH", "WIDTH", "ADDRESS_RADIX", "DATA_RADIX"):
                if key not in header:
                    raise ImageError(f"{key} is missing before CONTENT BEGIN")
            if header["DEPTH"] != str(max(depth, 0)) or header["WIDTH"] != str(word_width):
                raise ImageError(f"DEPTH = {header['DEPTH'][:20]}, WIDTH = {header['WIDTH'][:20]}; "
                                 f"{depth} words of {word_width} bits expected")
            for key in ("ADDRESS_RADIX", "DATA_RADIX"):
                if header[key] not in _MIF_RADIX:
                    raise ImageError(f"{key} = {header[key][:20]}; choose one of {sorted(_MIF_RADIX)}")
            words = [None] * depth
            statement = rest[2] if len(rest) > 2 else ""
            if not statement:
                continue
        elif words is None:
            key, eq, value = statement.partition("=")
            key = key.strip().upper()
            if not eq or key not in ("DEPTH", "WIDTH", "ADDRESS_RADIX", "DATA_RADIX") or key in header:
                raise ImageError(f"line {line}: {statement[:40]!r} is not a header line")
            header[key] = value.strip().upper()
            continue
        if upper == "END":
            ended = True
            continue
        addr, colon, data = statement.partition(":")
        values = data.split()
        if not colon or not values:
            raise ImageError(f"line {line}: {statement[:40]!r} is not 'address : data'")
        addr = addr.strip()
        a_radix = _MIF_RADIX[header["ADDRESS_RADIX"]]
        if addr.startswith("[") and addr.endswith("]") and ".." in addr:
            first, last = (_word(v.strip(), a_radix, 64, line) for v in addr[1:-1].split("..", 1))
            if last < first:
                raise ImageError(f"line {line}: the range {addr[:40]} runs backwards")
            if last >= depth:  # before expanding anything: bounded work
                raise ImageError(f"line {line}: address {last:x} is beyond the {depth} words expected")
            pattern = [_mif_value(v, header["DATA_RADIX"], word_width, line) for v in values]
            for i in range(first, last + 1):
                _collect(words, i, pattern[(i - first) % len(pattern)], line)
        else:
            start = _word(addr, a_radix, 64, line)
            for i, v in enumerate(values):
                _collect(words, start + i, _mif_value(v, header["DATA_RADIX"], word_width, line), line)
    if not ended:
        raise ImageError("no CONTENT BEGIN ... END;")
    return _complete(words)


WRITERS = {"readmemh": (".hex", write_readmemh), "coe": (".coe", write_coe), "mif": (".mif", write_mif)}
READERS = {"readmemh": read_readmemh, "coe": read_coe, "mif": read_mif}
