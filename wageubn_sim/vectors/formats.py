"""Memory-image writers and readers: Verilog ``$readmemh``, Xilinx ``.coe``, Intel ``.mif``.

Every word is two's complement: ``lanes`` values of ``width`` bits packed with lane 0 in the
least significant bits (as FINN does), so the word is ``lanes * width`` bits wide and is written
as exactly ceil(word_width / 4) lowercase hex digits. The readers parse what the writers write
(and the usual variations: comments, blank lines, upper case) so that a test can show that each
file holds exactly the ``.npy`` values.
"""
from __future__ import annotations

import re
import zlib

import numpy as np


# Words of up to 63 bits are handled as int64 arrays (vectorised); wider ones as Python ints.
_VECTOR_BITS = 63


def lane_range(width: int, signed: bool) -> tuple[int, int]:
    """The values a lane of ``width`` bits holds: two's complement, or unsigned."""
    return (-(1 << (width - 1)), (1 << (width - 1)) - 1) if signed else (0, (1 << width) - 1)


def pack_words(values: np.ndarray, width: int, lanes: int, signed: bool = True) -> list[int]:
    """Flattened values (two's complement, or unsigned) -> words (Python ints), lane 0 in the
    LSBs; the last word is padded with zero lanes."""
    flat = np.asarray(values, dtype=np.int64).reshape(-1)
    lo, hi = lane_range(width, signed)
    if flat.size and (int(flat.min()) < lo or int(flat.max()) > hi):
        raise ValueError(f"a value does not fit {width} {'signed' if signed else 'unsigned'} bits")
    mask = (1 << width) - 1
    if lanes * width <= _VECTOR_BITS:
        lanes_of = np.zeros(-(-flat.size // lanes) * lanes, np.int64)
        lanes_of[:flat.size] = flat & mask
        shifts = np.arange(lanes, dtype=np.int64) * width
        return (lanes_of.reshape(-1, lanes) << shifts).sum(axis=1).tolist()  # disjoint bits: sum = or
    ints = [int(v) & mask for v in flat] + [0] * (-flat.size % lanes)
    words = []
    for i in range(0, len(ints), lanes):
        word = 0
        for lane, v in enumerate(ints[i:i + lanes]):
            word |= v << (lane * width)
        words.append(word)
    return words


def unpack_words(words: list[int], width: int, lanes: int, count: int, signed: bool = True) -> np.ndarray:
    """Words -> the first ``count`` values (int64; two's complement, or unsigned), lane 0 in
    the LSBs."""
    mask, sign = (1 << width) - 1, (1 << (width - 1)) if signed else 0
    if words and max(words) >> (lanes * width):
        raise ImageError(f"a word has bits set above its {lanes} lanes of {width} bits (they are zero)")
    if lanes * width <= _VECTOR_BITS:
        w = np.array(words, dtype=np.int64) if words else np.zeros(0, np.int64)
        v = (w[:, None] >> (np.arange(lanes, dtype=np.int64) * width)) & mask
        v = np.where(v & sign, v - (1 << width), v).reshape(-1)
        return np.ascontiguousarray(v[:count])
    values = []
    for word in words:
        for lane in range(lanes):
            v = (word >> (lane * width)) & mask
            values.append(v - (1 << width) if v & sign else v)
    return np.array(values[:count], dtype=np.int64)


def _digits(word_width: int) -> int:
    return -(-word_width // 4)


def word_bytes(word_width: int) -> int:
    """Bytes per word in byte-oriented images (Intel HEX, the CRC): ceil(word_width / 8)."""
    return -(-word_width // 8)


def memory_crc32(words, word_width: int, fill: int = 0, memory_depth: int | None = None) -> str:
    """IEEE 802.3 CRC-32 (zlib's) of the memory as it sits in a byte-addressed dump: each word in
    ceil(word_width / 8) bytes, least significant byte first, words in address order; with
    ``memory_depth``, the words are followed by ``fill`` up to that depth (fed in blocks, never
    built as a list)."""
    n = word_bytes(word_width)
    if word_width <= 64:
        image = np.array(words, dtype=np.uint64).astype("<u8").view(np.uint8).reshape(-1, 8)[:, :n]
        crc = zlib.crc32(image.tobytes())
    else:
        crc = zlib.crc32(b"".join(w.to_bytes(n, "little") for w in words))
    padding = (memory_depth or 0) - len(words)
    if padding > 0:
        block = fill.to_bytes(n, "little") * max(1, min(padding, (1 << 20) // n))
        per_block = len(block) // n
        for _ in range(padding // per_block):
            crc = zlib.crc32(block, crc)
        crc = zlib.crc32(block[:padding % per_block * n], crc)
    return f"{crc:08x}"


def write_mem(words, word_width, header=None) -> str:
    """$readmemh data for synthesis (Vivado UG901): one word per line, exactly
    ceil(word_width / 4) lowercase hex digits, nothing else (no comments, no blank line)."""
    d = _digits(word_width)
    return "".join(f"{w:0{d}x}\n" for w in words)


def write_readmemh(words, word_width, header: dict) -> str:
    """Version 1's .hex: $readmemh data after '// key=value' comment lines (simulators only)."""
    lines = [f"// {k}={v}" for k, v in header.items()]
    d = _digits(word_width)
    lines += [f"{w:0{d}x}" for w in words]
    return "\n".join(lines) + "\n"


HEX_ADDRESSING = ("word", "byte")


def _hex_record(kind: int, offset: int, data: bytes) -> str:
    body = bytes([len(data), offset >> 8, offset & 0xFF, kind]) + data
    return f":{body.hex().upper()}{(-sum(body)) & 0xFF:02X}\n"


def write_intel_hex(words, word_width, header=None, addressing: str = "word") -> str:
    """Intel HEX (.hex, as Quartus reads it): one data record (type 00) per word, its
    ceil(word_width / 8) bytes most significant first; the record address is the word's index
    (``word`` addressing, Quartus's default) or index * bytes per word (``byte``, standard
    Intel HEX as srec_cat and objcopy read it); an extended linear address record (type 04)
    before the first word at or above each 64 Ki boundary; an end-of-file record (type 01)."""
    n = word_bytes(word_width)
    if n > 255:
        raise ValueError(f"a {word_width}-bit word does not fit an Intel HEX record (255 bytes)")
    out, upper = [], 0
    for i, w in enumerate(words):
        address = i if addressing == "word" else i * n
        if address >> 16 != upper:
            upper = address >> 16
            if upper >> 16:
                raise ValueError("the memory is beyond Intel HEX's 4 GiB address space")
            out.append(_hex_record(0x04, 0, upper.to_bytes(2, "big")))
        out.append(_hex_record(0x00, address & 0xFFFF, w.to_bytes(n, "big")))
    out.append(":00000001FF\n")
    return "".join(out)


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
    a = _mif_address_digits(depth)
    lines += [f"DEPTH = {depth};", f"WIDTH = {word_width};", "ADDRESS_RADIX = HEX;",
              "DATA_RADIX = HEX;", "CONTENT BEGIN"]
    lines += [f"{i:0{a}x} : {w:0{d}x};" for i, w in enumerate(words or [0])]
    lines.append("END;")
    return "\n".join(lines) + "\n"


class ImageError(ValueError):
    """A memory image that breaks its format's rules, or does not hold the expected words; the
    message says where."""


# digits of each radix, '_' allowed between them (where the caller allows it)
_DIGITS = {2: re.compile(r"[01][01_]*"), 8: re.compile(r"[0-7][0-7_]*"),
           10: re.compile(r"[0-9][0-9_]*"), 16: re.compile(r"[0-9a-fA-F][0-9a-fA-F_]*")}


def _word(token: str, radix: int, word_width: int, line: int, underscores: bool = False) -> int:
    """A word in ``radix`` digits (and, in Verilog's files, '_' between them); int() alone would
    also take signs, spaces and 0x prefixes."""
    if _DIGITS[radix].fullmatch(token) is None or (not underscores and "_" in token):
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
                address = _word(token[1:], 16, 64, line, underscores=True)
            else:
                _collect(words, address, _word(token, 16, word_width, line, underscores=True), line)
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


_COE_HEAD = b"memory_initialization_radix=16;\nmemory_initialization_vector=\n"


def _read_coe_as_written(text: str, depth: int, word_width: int):
    """The words of a .coe laid out as `write_coe` writes it (comment lines, the two keywords,
    one word per line), decoded at once; None for any other layout."""
    data = text.encode("ascii", errors="replace")
    at = data.find(_COE_HEAD)
    if at < 0 or any(line and not line.startswith(b";") for line in data[:at].split(b"\n")):
        return None
    d = _digits(word_width)
    grid = _grid(data[at + len(_COE_HEAD):], depth, d + 2)
    if grid is None or (grid[:-1, d] != ord(",")).any() or grid[-1, d] != ord(";") \
            or (grid[:, d + 1] != ord("\n")).any():
        return None
    words = _hex_field(grid, 0, d)
    return None if words is None else _fits(words, word_width)


def read_coe(text: str, depth: int, word_width: int) -> list[int]:
    """Exactly ``depth`` words from a Xilinx .coe file: memory_initialization_radix (2, 10 or
    16), then memory_initialization_vector, the last keyword (anything after it is ignored, as
    UG896 says)."""
    words = _read_coe_as_written(text, depth, word_width)
    if words is not None:
        return words
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


def _mif_address_digits(depth: int) -> int:
    return max(1, _digits(max(depth - 1, 1).bit_length()))


def _read_mif_as_written(text: str, depth: int, word_width: int):
    """The words of a .mif laid out as `write_mif` writes it (comment lines, the header, one
    'address : word;' line per word in address order), decoded at once; None otherwise."""
    data = text.encode("ascii", errors="replace")
    head = (f"DEPTH = {depth};\nWIDTH = {word_width};\nADDRESS_RADIX = HEX;\nDATA_RADIX = HEX;\n"
            "CONTENT BEGIN\n").encode()
    at = data.find(head)
    if at < 0 or any(line and not line.startswith(b"--") for line in data[:at].split(b"\n")) \
            or not data.endswith(b"END;\n"):
        return None
    a, d = _mif_address_digits(depth), _digits(word_width)
    grid = _grid(data[at + len(head):-5], depth, a + d + 5)
    if grid is None:
        return None
    separators = np.frombuffer(b" : ", np.uint8)
    if (grid[:, a:a + 3] != separators).any() or (grid[:, -2] != ord(";")).any() \
            or (grid[:, -1] != ord("\n")).any():
        return None
    addresses, words = _hex_field(grid, 0, a), _hex_field(grid, a + 3, d)
    if addresses != list(range(depth)) or words is None:
        return None
    return _fits(words, word_width)


def read_mif(text: str, depth: int, word_width: int) -> list[int]:
    """Exactly ``depth`` words from an Intel .mif file: DEPTH and WIDTH (which must be the
    expected ones), ADDRESS_RADIX, DATA_RADIX, then CONTENT BEGIN ... END; every address once."""
    words = _read_mif_as_written(text, depth, word_width)
    if words is not None:
        return words
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


_HEX_VALUE = np.full(256, 255, np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX_VALUE[_c] = _i
    _HEX_VALUE[ord(chr(_c).upper())] = _i


def _hex_field(grid: np.ndarray, start: int, digits: int):
    """The hex numbers in columns start .. start + digits of a (rows, line length) byte grid,
    as a list of ints; None when a character there is not a hex digit."""
    field = grid[:, start:start + digits]
    values = _HEX_VALUE[field]
    if (values == 255).any():
        return None
    if digits <= 15:  # 60 bits: int64
        return (values.astype(np.int64) << (4 * np.arange(digits - 1, -1, -1))).sum(axis=1).tolist()
    return [int(bytes(row), 16) for row in field]


def _grid(data: bytes, rows: int, line: int):
    """``data`` as a (rows, line) byte grid when it has exactly that size, else None."""
    if rows == 0 or len(data) != rows * line:
        return None
    return np.frombuffer(data, np.uint8).reshape(rows, line)


def _fits(words: list, word_width: int) -> list:
    if any(w >> word_width for w in words):
        line = next(i for i, w in enumerate(words) if w >> word_width) + 1
        raise ImageError(f"word {line}: wider than {word_width} bits")
    return words


def read_mem(text: str, depth: int, word_width: int) -> list[int]:
    """Exactly ``depth`` words from a data-only $readmemh file, checked by the rules Vivado
    synthesis (UG901) sets: nothing but data (no comment, no '@' address, no blank line), one
    word per line, as many lines as the memory has rows; and, as our writer writes, exactly
    ceil(word_width / 4) hex digits per line."""
    d = _digits(word_width)
    grid = _grid(text.encode("ascii", errors="replace"), depth, d + 1)
    if grid is not None and (grid[:, d] == ord("\n")).all():  # as written: every line at once
        words = _hex_field(grid, 0, d)
        if words is not None:
            return _fits(words, word_width)
    lines = text.split("\n")  # not as expected: find the first line that breaks a rule
    if lines[-1] != "":
        raise ImageError(f"line {len(lines)}: the last line does not end with a newline")
    for number, line in enumerate(lines[:-1], 1):
        if len(line) != d or _DIGITS[16].fullmatch(line) is None or "_" in line:
            raise ImageError(f"line {number}: {line[:40]!r} is not a word of exactly {d} hex digits "
                             "(a .mem file holds data only: UG901)")
    raise ImageError(f"{len(lines) - 1} lines; the memory has {depth} rows (UG901: one line per row)")


def read_intel_hex(text: str, depth: int, word_width: int, addressing: str = "word") -> list[int]:
    """Exactly ``depth`` words from Intel HEX: every record's length and checksum checked, data
    records a whole number of words (most significant byte first), type 04 and 02 records
    setting the upper address, one type 01 record last; each word written once."""
    n = word_bytes(word_width)
    words: list = [None] * depth
    base, ended = 0, False
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw.rstrip("\r")
        if not line:
            continue
        if ended:
            raise ImageError(f"line {number}: a record after the end-of-file record")
        try:
            if not line.startswith(":") or len(line) < 11:
                raise ValueError
            body = bytes.fromhex(line[1:])
        except ValueError:
            raise ImageError(f"line {number}: {line[:40]!r} is not an Intel HEX record") from None
        count, offset, kind, data = body[0], (body[1] << 8) | body[2], body[3], body[4:-1]
        if len(data) != count:
            raise ImageError(f"line {number}: the record declares {count} data bytes and holds {len(data)}")
        if sum(body) & 0xFF:
            raise ImageError(f"line {number}: checksum mismatch")
        if kind == 0x00:
            if count % n or (addressing == "byte" and (base + offset) % n):
                raise ImageError(f"line {number}: the data is not whole {n}-byte words")
            first = base + offset if addressing == "word" else (base + offset) // n
            for j in range(count // n):
                word = int.from_bytes(data[j * n:(j + 1) * n], "big")
                if word >> word_width:
                    raise ImageError(f"line {number}: a word is wider than {word_width} bits")
                _collect(words, first + j, word, number)
        elif kind == 0x01 and count == 0:
            ended = True
        elif kind in (0x02, 0x04) and count == 2:
            base = int.from_bytes(data, "big") << (16 if kind == 0x04 else 4)
        else:
            raise ImageError(f"line {number}: record type {kind:02x} with {count} bytes is not "
                             "read here (00, 01, 02 and 04 are)")
    if not ended:
        raise ImageError("no end-of-file record (:00000001FF)")
    return _complete(words)


# kind -> (extension, writer(words, word_width, header, addressing), reader(text, depth,
# word_width, addressing)). "readmemh" is version 1's commented .hex, read for old bundles.
IMAGE_KINDS = {
    "mem": (".mem", lambda w, ww, h, a: write_mem(w, ww), lambda t, d, ww, a: read_mem(t, d, ww)),
    "hex": (".hex", lambda w, ww, h, a: write_intel_hex(w, ww, h, a), read_intel_hex),
    "coe": (".coe", lambda w, ww, h, a: write_coe(w, ww, h), lambda t, d, ww, a: read_coe(t, d, ww)),
    "mif": (".mif", lambda w, ww, h, a: write_mif(w, ww, h), lambda t, d, ww, a: read_mif(t, d, ww)),
    "readmemh": (".hex", lambda w, ww, h, a: write_readmemh(w, ww, h),
                 lambda t, d, ww, a: read_readmemh(t, d, ww)),
}
