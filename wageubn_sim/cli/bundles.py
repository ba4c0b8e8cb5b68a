"""Commands on test-vector bundles: vectors (write one), verify (check one)."""
from __future__ import annotations

import sys

import click

from .main import CHECK_FAILED, BadInput, check_output, command_line, guard, main, progress
from .options import graph_and_inputs, input_options, input_warning_option, warn_about_input


@main.command()
@click.argument("graph")
@input_options
@input_warning_option
@click.option("-o", "--out", required=True, help="Bundle folder to write.")
@click.option("--layout", type=click.Choice(["NCHW", "NHWC"]), default="NCHW", show_default=True)
@click.option("--lanes", type=click.IntRange(1), default=1, show_default=True,
              help="Values packed per word (lane 0 in the LSBs).")
@click.option("--word-width", type=click.IntRange(2), help="Bits per memory word (default: lanes x "
                                                           "value width; wider words are zero-padded "
                                                           "above the last lane).")
@click.option("--formats", default="mem,coe,mif,npy", show_default=True,
              help="File kinds: mem ($readmemh, data only), hex (Intel HEX), coe, mif, npy; and "
                   "the peer layouts hls4ml (tb_data) and onnx (test_data_set_0).")
@click.option("--depth", type=click.IntRange(1), help="Pad every memory image to N words (a tensor "
                                                      "with more words is refused).")
@click.option("--fill", default="0", show_default=True,
              help="The word that pads images to --depth (decimal, or hex as 0x...).")
@click.option("--hex-addressing", type=click.Choice(["word", "byte"]), default="word", show_default=True,
              help="Intel HEX record addresses: word index (Quartus) or byte offset (srec_cat, objcopy).")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
def vectors(graph, input_path, random, shape, seed, input_warning, out, layout, lanes, word_width, formats, depth,
            fill, hex_addressing, force):
    """Write a test-vector bundle (manifest + memory images) for GRAPH on inputs."""
    from ..vectors.bundle import write_bundle
    check_output(out, force, graph, input_path)  # before the work
    try:
        fill_word = int(fill, 0)
    except ValueError:
        raise BadInput(f"--fill {fill!r}: give a word as a number, e.g. 0 or 0xdead") from None
    g, x = graph_and_inputs(graph, input_path, random, shape, seed)
    warn_about_input(g.inputs[0], x, input_warning)
    guard(write_bundle, g, x, out, layout, lanes, [k.strip() for k in formats.split(",")], force,
           seed if input_path is None else None, command_line(), progress("writing vectors"),
           word_width, depth, fill_word, hex_addressing)
    click.echo(f"wrote {out}")


@main.command()
@click.argument("bundle")
@click.option("--graph", "graph_path", help="Also check that the bundle is this graph's: layers, "
                                            "params, parameter values, input, outputs.")
@click.option("--golden", "golden_dir", help="Also recompute it with a built golden model (the "
                                             "folder of wageubn-sim codegen, after make): every "
                                             "layer's tensors and events.")
def verify(bundle, graph_path, golden_dir):
    """Check a bundle from its files alone: every file listed and matching its sha256, the
    network recomputed from the input and parameters, every layer, tensor, format and event
    count compared (exit 1 listing every failure; 2 if BUNDLE is no bundle)."""
    from ..graph.ir import load_graph
    from ..vectors.verify import verify_bundle
    graph = guard(load_graph, graph_path) if graph_path else None
    report = guard(verify_bundle, bundle, graph)
    click.echo(str(report))
    ok = report.ok
    if golden_dir:
        from ..codegen.check import check_bundle
        layers, failures = guard(check_bundle, golden_dir, bundle)
        click.echo(f"golden model {golden_dir}: {layers} layers recomputed: "
                   + ("all match" if not failures else f"{len(failures)} FAILED\n  " + "\n  ".join(failures)))
        ok = ok and not failures
    sys.exit(0 if ok else CHECK_FAILED)
