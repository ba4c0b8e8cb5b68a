"""Memory files by the vendors' rules, read back by our readers and by an independent one
(Debian's srecord), the per-tensor CRC-32, padding to a depth, the peer layouts (hls4ml's
tb_data, ONNX test data), file-safe folder names, and version-1 bundles."""
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, strategies as st

import wageubn_sim
from wageubn_sim.cli import main
from wageubn_sim.demo import images_to_input, load_demo_model
from wageubn_sim.vectors import verify_bundle, write_bundle
from wageubn_sim.vectors.bundle import file_safe, from_layout
from wageubn_sim.vectors.formats import (IMAGE_KINDS, ImageError, memory_crc32, pack_words,
                                         read_coe, read_intel_hex, read_mem, read_mif,
                                         write_coe, write_intel_hex, write_mem, write_mif)

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def demo():
    model, images, _, _ = load_demo_model()
    x = images_to_input(images[:2])
    return wageubn_sim.compile(model, x), x


@given(word_width=st.integers(1, 140), data=st.data(),
       addressing=st.sampled_from(["word", "byte"]))
def test_every_image_kind_round_trips(word_width, data, addressing):
    words = data.draw(st.lists(st.integers(0, (1 << word_width) - 1), min_size=1, max_size=30))
    for kind, (_, write, read) in IMAGE_KINDS.items():
        text = write(words, word_width, {"k": "v"}, addressing)
        assert read(text, len(words), word_width, addressing) == words, kind
        if kind in ("coe", "mif", "hex", "readmemh"):  # a blank line between records: the
            # general parser, not the one for files as written, must give the same words
            spaced = text.replace("\n", "\n\n", 2)
            assert read(spaced, len(words), word_width, addressing) == words, kind
        with pytest.raises(ImageError):  # one word more is expected than the file holds
            read(text, len(words) + 1, word_width, addressing)


def _crc32_reference(data: bytes) -> int:
    """IEEE 802.3 CRC-32, bit by bit (reflected polynomial 0xEDB88320, init and final xor ~0)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0xEDB88320 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def test_crc32_is_ieee_over_little_endian_words():
    assert _crc32_reference(b"123456789") == 0xCBF43926  # the standard check value
    words = [0x0123, 0xFEDC, 0x0007]
    image = bytes([0x23, 0x01, 0xDC, 0xFE, 0x07, 0x00])  # 12-bit words in 2 bytes, LSB first
    assert memory_crc32(words, 12) == f"{_crc32_reference(image):08x}"
    assert memory_crc32([0x12345], 17) == f"{_crc32_reference(bytes([0x45, 0x23, 0x01])):08x}"


def test_mem_follows_ug901_and_nothing_else_is_read():
    text = write_mem([0x0, 0x7F, 0x80], 8)
    assert text == "00\n7f\n80\n"  # data only: a word per line, fixed digits
    assert read_mem(text, 3, 8) == [0, 0x7F, 0x80]
    bad = {"// c\n00\n7f\n80\n": "line 1", "00\n\n7f\n80\n": "line 2", "@0\n00\n7f\n80\n": "line 1",
           "00\n7f\n80": "does not end with a newline", "00\n7f\n": "2 lines; the memory has 3 rows",
           "00\n7f\n80\n01\n": "4 lines", "000\n7f\n80\n": "exactly 2 hex digits",
           "00\r\n7f\r\n80\r\n": "line 1", "0_\n7f\n80\n": "line 1", "00\n7f\nff\n": None}
    for text, message in bad.items():
        if message is None:
            assert read_mem(text, 3, 8) == [0, 0x7F, 0xFF]
            continue
        with pytest.raises(ImageError, match=message):
            read_mem(text, 3, 8)
    with pytest.raises(ImageError, match="wider than 7 bits"):
        read_mem("00\n80\n", 2, 7)


def test_intel_hex_records_checksums_and_extended_addresses():
    text = write_intel_hex([0xABCD, 0x0001], 16, None, "word")
    assert text.splitlines() == [":02000000ABCD86", ":020001000001FC", ":00000001FF"]
    many = list(range(70000))  # word addresses beyond 64 Ki: an extended linear address record
    text = write_intel_hex([w & 0xFF for w in many], 8, None, "word")
    assert ":020000040001F9" in text.splitlines()
    assert read_intel_hex(text, len(many), 8) == [w & 0xFF for w in many]
    byte = write_intel_hex([1, 2, 3], 24, None, "byte")  # byte addressing: 3 bytes per word
    assert byte.splitlines()[1].startswith(":03000300")
    for broken, message in ((":02000000ABCD87\n:00000001FF\n", "checksum"),
                            (":02000000ABCD86\n", "end-of-file"),
                            (":03000000ABCD86\n:00000001FF\n", "declares 3 data bytes"),
                            (":02000000ABCD86\n:02000000ABCD86\n:00000001FF\n", "written twice"),
                            (":02000300ABCD83\n:00000001FF\n", "beyond"),
                            (":0200000503FFF7\n:00000001FF\n", "record type 05"),
                            ("02000000ABCD86\n:00000001FF\n", "not an Intel HEX record")):
        with pytest.raises(ImageError, match=message):
            read_intel_hex(broken, 2, 16)


def test_coe_and_mif_follow_the_vendor_syntax():
    coe = write_coe([0x01, 0xFF], 8, {"tensor": "t"})
    lines = coe.splitlines()
    keywords = [l.split("=")[0] for l in lines if "=" in l and not l.startswith(";")]
    assert keywords == ["memory_initialization_radix", "memory_initialization_vector"]  # vector last
    assert lines[-1].endswith(";") and read_coe(coe, 2, 8) == [1, 0xFF]
    with pytest.raises(ImageError, match="radix '8'"):
        read_coe(coe.replace("radix=16", "radix=8"), 2, 8)
    mif = write_mif([0x01, 0xFF], 8, {"tensor": "t"})
    header = [l.split("=")[0].strip() for l in mif.splitlines() if "=" in l and not l.startswith("--")]
    assert header == ["DEPTH", "WIDTH", "ADDRESS_RADIX", "DATA_RADIX"]
    assert "CONTENT BEGIN" in mif and mif.rstrip().endswith("END;") and read_mif(mif, 2, 8) == [1, 0xFF]
    with pytest.raises(ImageError, match="DEPTH = 2, WIDTH = 8; 3 words"):
        read_mif(mif, 3, 8)


def _srec_bytes(path: Path, fmt: str) -> bytes:
    out = path.with_suffix(path.suffix + ".bin")
    done = subprocess.run(["srec_cat", str(path), fmt, "-o", str(out), "-binary"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return out.read_bytes()


@pytest.mark.parametrize("lanes", [1, 2, 4])  # 8-, 16- and 32-bit words of 8-bit weights
def test_srecord_reads_our_files_as_the_npy_words(demo, tmp_path, lanes):
    """Debian's srecord, an independent reader: .mem (-VMem) and byte-addressed Intel HEX give
    each word most significant byte first, .mif least significant first; word-addressed Intel
    HEX (Quartus) coincides with byte addressing for 8-bit words."""
    if shutil.which("srec_cat") is None:
        if os.environ.get("WAGEUBN_REQUIRE_RTL"):
            raise RuntimeError("WAGEUBN_REQUIRE_RTL is set but srec_cat is not installed (apt-get install srecord)")
        pytest.skip("srec_cat is not installed (apt-get install srecord)")
    graph, x = demo
    for addressing in ("byte", "word") if lanes == 1 else ("byte",):
        root = write_bundle(graph, x, tmp_path / addressing, lanes=lanes, hex_addressing=addressing,
                            kinds=("mem", "hex", "mif", "npy"))
        manifest = json.loads((root / "manifest.json").read_text())
        vmem = 0
        for tid, entry in manifest["tensors"].items():
            files = {f["kind"]: root / f["path"] for f in entry["files"]}
            stored = np.load(files["npy"], allow_pickle=False)
            words = pack_words(stored, entry["width"], lanes) + [0] * (entry["memory_depth"] - entry["depth"])
            n = -(-entry["word_width"] // 8)
            big = b"".join(w.to_bytes(n, "big") for w in words)
            if addressing == "byte" or n == 1:  # srecord reads byte addresses only
                assert _srec_bytes(files["hex"], "-Intel") == big, tid
            if entry["word_width"] <= 32:  # srecord's MIF and VMem readers take words to 32 bits
                assert _srec_bytes(files["mif"], "-Memory_Initialization_File") == \
                    b"".join(w.to_bytes(n, "little") for w in words), tid
            if entry["word_width"] in (8, 16, 32):  # VMem: whole bytes only
                assert _srec_bytes(files["mem"], "-VMem") == big, tid
                vmem += 1
        assert vmem >= 6  # the weights (8-bit values), in lanes; the input too where its words fit


def test_depth_pads_every_image_with_the_fill_word(demo, tmp_path):
    graph, x = demo
    root = write_bundle(graph, x, tmp_path / "v", depth=2048, fill=0x5A, kinds=("mem", "hex", "coe", "mif", "npy"))
    assert verify_bundle(root).ok
    manifest = json.loads((root / "manifest.json").read_text())
    entry = manifest["tensors"]["3.conv1/weight"]
    assert (entry["depth"], entry["memory_depth"]) == (576, 2048)
    lines = (root / "3.conv1" / "weight.mem").read_text().splitlines()
    assert len(lines) == 2048 and set(lines[576:]) == {"5a"}
    stored = np.load(root / "3.conv1" / "weight.npy")
    image = pack_words(stored, 8, 1) + [0x5A] * (2048 - 576)
    assert entry["crc32"] == memory_crc32(image, 8)
    with pytest.raises(ValueError, match="words do not fit a memory of depth 100"):
        write_bundle(graph, x, tmp_path / "small", depth=100)
    with pytest.raises(ValueError, match="fill 0x10000 is wider than tensor input's 16-bit words"):
        write_bundle(graph, x, tmp_path / "wide", fill=0x10000)
    assert not (tmp_path / "small").exists() and not (tmp_path / "wide").exists()
    # a fill word edited in one image (its sha256 updated) is blamed on that file
    path = root / "3.conv1" / "weight.mem"
    lines[-1] = "00"
    path.write_text("\n".join(lines) + "\n")
    entry["files"] = [dict(f, sha256=__import__("hashlib").sha256(path.read_bytes()).hexdigest())
                      if f["kind"] == "mem" else f for f in entry["files"]]
    (root / "manifest.json").write_text(json.dumps(manifest))
    assert verify_bundle(root).failures == [
        "3.conv1/weight.mem: its words beyond the tensor's 576 are not the fill 0x5a"]


def test_peer_layouts_hls4ml_and_onnx(demo, tmp_path):
    from onnx import TensorProto, numpy_helper
    graph, x = demo
    root = write_bundle(graph, x, tmp_path / "v", layout="NHWC", kinds=("mem", "npy", "hls4ml", "onnx"))
    assert verify_bundle(root).ok
    x_q = graph.quantize_input(x)
    y = graph.run(x).values
    rows = (root / "tb_data" / "tb_input_features.dat").read_text().splitlines()
    assert len(rows) == 2 and [float(v) for v in rows[0].split(" ")] == \
        (x_q[0].transpose(1, 2, 0).reshape(-1) * 2.0 ** -8).tolist()  # NHWC, exact reals
    out_rows = (root / "tb_data" / "tb_output_predictions.dat").read_text().splitlines()
    assert np.array_equal(np.array([[float(v) for v in r.split(" ")] for r in out_rows]), y)
    tensor = TensorProto()
    tensor.ParseFromString((root / "test_data_set_0" / "output_0.pb").read_bytes())
    assert tensor.name == "8" and np.array_equal(numpy_helper.to_array(tensor), y)
    tensor.ParseFromString((root / "test_data_set_0" / "input_0.pb").read_bytes())
    assert tensor.data_type == TensorProto.FLOAT and list(tensor.dims) == [2, 1, 8, 8]
    # a prediction edited (sha256 updated): verify blames that file
    manifest = json.loads((root / "manifest.json").read_text())
    path = root / "tb_data" / "tb_output_predictions.dat"
    path.write_text(path.read_text().replace(out_rows[0].split(" ")[0], "1.5", 1))
    for f in manifest["peer_files"]:
        if f["path"] == "tb_data/tb_output_predictions.dat":
            f["sha256"] = __import__("hashlib").sha256(path.read_bytes()).hexdigest()
    (root / "manifest.json").write_text(json.dumps(manifest))
    assert verify_bundle(root).failures == [
        "tb_data/tb_output_predictions.dat: its values differ from tensor 8/output's"]


@given(name=st.text(min_size=1, max_size=12))
def test_file_safe_names_are_safe_and_one_to_one(name):
    safe = file_safe(name)
    assert all(c.isascii() and (c.isalnum() or c in "_.-~") for c in safe)
    assert not safe.startswith(".") and safe not in (".", "..")
    other = name + "x"
    assert file_safe(other) != safe  # a sample of injectivity; the rule escapes '~' itself


def test_file_safe_examples():
    assert file_safe("layer1.0.conv1") == "layer1.0.conv1"
    assert file_safe("layer1.0.relu-2") == "layer1.0.relu-2"
    assert file_safe("/conv1/Conv") == "~2fconv1~2fConv"
    assert file_safe("~2f") == "~7e2f" and file_safe(".x") == "~2ex"


def test_layers_have_one_name_everywhere(demo, tmp_path):
    """Graph, bundle, audit and compare name a layer by its torch module path; a module called
    twice gets -2 (torchvision's BasicBlock calls its relu twice)."""
    from wageubn_sim.models import resnet18
    from wageubn_sim.reports import audit
    graph, x = demo
    names = [n.name for n in graph.nodes]
    assert names[:4] == ["0", "1", "2", "3.conv1"] and "5.add" in names
    root = write_bundle(graph, x[:1], tmp_path / "v")
    manifest = json.loads((root / "manifest.json").read_text())
    assert [l["name"] for l in manifest["layers"]] == names
    assert [l["folder"] for l in manifest["layers"]] == names  # module paths are file-safe
    rows = audit(graph, x).rows  # the graph input's row first, then the layers'
    assert rows[0].layer == graph.inputs[0].name and {r.layer for r in rows[1:]} == set(names)
    net = wageubn_sim.quantize_model(resnet18(10, cifar=True)).eval()
    rnames = [n.name for n in wageubn_sim.compile(net, np.zeros((1, 3, 32, 32))).nodes]
    assert "layer1.0.relu" in rnames and "layer1.0.relu-2" in rnames and "layer1.0.conv1" in rnames


def test_cli_accumulator_per_layer(tmp_path):
    from wageubn_sim.demo import DEMO_DATA
    np.save(tmp_path / "x.npy", images_to_input(load_demo_model()[1][:3]))
    r = CliRunner().invoke(main, ["compare", "wageubn_sim.demo:demo_model", "--weights", str(DEMO_DATA),
                                  "--input", str(tmp_path / "x.npy"), "--accumulator", "3.conv1=14:SAT"])
    assert r.exit_code == 1 and "first divergence: 3.conv1" in r.output
    r = CliRunner().invoke(main, ["compare", "wageubn_sim.demo:demo_model", "--input", str(tmp_path / "x.npy"),
                                  "--accumulator", "nope=14:SAT"])
    assert r.exit_code == 2 and "name layers the model does not have: ['nope']" in r.output
    assert "3.conv1" in r.output  # the message lists the MAC layers' names


def test_version_1_bundles_still_verify():
    """tests/data/v1: a bundle and graph written by wageubn-sim 0.1.0 (manifest version 1:
    commented .hex, tagged params)."""
    data = DATA / "v1"
    report = verify_bundle(data / "bundle", wageubn_sim.load_graph(data / "graph"))
    assert report.ok and report.layers == 6, str(report)
    r = CliRunner().invoke(main, ["verify", str(data / "bundle")])
    assert r.exit_code == 0 and "all match" in r.output


def test_every_property_of_the_manifest_schema_is_described():
    schema = json.loads((Path(wageubn_sim.__file__).parent / "vectors" / "manifest.schema.json").read_text())
    missing = []

    def walk(node, where):
        if isinstance(node, dict):
            for name, sub in node.get("properties", {}).items():
                if "description" not in sub:
                    missing.append(f"{where}/{name}")
            for key, sub in node.items():
                walk(sub, f"{where}/{key}")
        elif isinstance(node, list):
            for i, sub in enumerate(node):
                walk(sub, f"{where}/{i}")

    walk(schema, "")
    assert not missing, missing
    assert schema["properties"]["version"]["const"] == 2
