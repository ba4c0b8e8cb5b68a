"""Commands on a model or a graph: compile, simulate, compare, export."""
from __future__ import annotations

import io
import json
import sys

import click
import numpy as np

from ..files.write import write_file_atomically
from .main import CHECK_FAILED, BadInput, check_output, guard, main
from .options import (accumulator_option, from_qonnx_model, graph_and_inputs, input_format_option,
                      input_options, input_warning_option, is_onnx, load_inputs, load_model,
                      parse_accumulator, parse_format, rescale_option, warn_about_input)


@main.command("compile")
@click.argument("model")
@click.option("--weights", help="State dict: .pt (loaded with weights_only=True) or .npz.")
@input_options
@input_format_option
@accumulator_option
@click.option("--fold-bn", "fold_bn", type=click.IntRange(2, 31), metavar="BITS",
              help="Fold each BatchNorm into its conv with BITS-bit multipliers (a different "
                   "datapath: docs/arithmetic.md section 9).")
@rescale_option
@click.option("-o", "--out", required=True, help="Graph folder to write.")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
def compile_cmd(model, weights, input_path, random, shape, seed, input_format, accumulator,
                fold_bn, rescale, out, force):
    """Compile MODEL into an integer graph folder: MODEL is package.module:factory (a model of
    the torch path's modules, traced on an example input) or a QONNX file MODEL.onnx (from
    Brevitas, FINN, hls4ml or `wageubn-sim export`)."""
    from ..graph.fold import fold_batchnorm
    check_output(out, force, weights, input_path, model if is_onnx(model) else None)  # before the work
    if is_onnx(model) and fold_bn is not None:
        raise BadInput("--fold-bn folds the integer BatchNorm layers of a torch model; a QONNX "
                       "model's float BatchNormalization becomes exact thresholds, or fixed-point "
                       "multipliers with --rescale multiplier:BITS: leave --fold-bn out")
    if is_onnx(model):
        graph = from_qonnx_model(model, input_format, accumulator, weights, input_path, random, shape,
                                 rescale)[1]
    else:
        if rescale is not None:
            raise BadInput("--rescale is for QONNX models (MODEL.onnx); leave it out")
        from ..graph.importer import compile_model
        fmt, acc = parse_format(input_format or "s16.8"), parse_accumulator(accumulator)
        net = load_model(model, weights)
        x = load_inputs(input_path, random or 1, shape, seed)
        graph = guard(compile_model, net, x, fmt, acc)
    if fold_bn is not None:
        graph = guard(fold_batchnorm, graph, fold_bn)
    guard(graph.save, out, force)
    click.echo(f"wrote {out}: {len(graph.nodes)} nodes")


@main.command()
@click.argument("graph")
@click.option("-o", "--out", required=True, help="The .onnx file to write.")
@click.option("--batch", type=click.IntRange(1), default=1, show_default=True,
              help="The batch size the model declares (qonnx executes only declared shapes).")
@click.option("--allow-inexact", is_flag=True,
              help="Export what QONNX cannot express exactly (narrow accumulators, the integer "
                   "BatchNorm's division, fixed-point multipliers) as qonnx computes it; the file's "
                   "metadata lists each.")
@click.option("--int-quant", is_flag=True,
              help="Name the quantizers IntQuant (QONNX's newer name) rather than Quant (what FINN, "
                   "hls4ml and qonnx's transformations match).")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
def export(graph, out, batch, allow_inexact, int_quant, force):
    """Export GRAPH as a QONNX model (Quant, Trunc and MultiThreshold nodes) that qonnx executes
    and FINN and hls4ml read."""
    from ..graph.ir import load_graph
    from ..qonnx import to_qonnx
    check_output(out, force, graph)  # before the work
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise BadInput("exporting QONNX needs onnx: pip install 'wageubn-sim[onnx]'") from None
    g = guard(load_graph, graph)
    model = guard(to_qonnx, g, out, batch, allow_inexact, force, int_quant)
    inexact = next((p.value for p in model.metadata_props if p.key == "wageubn_sim.inexact"), None)
    click.echo(f"wrote {out}: {len(model.graph.node)} ONNX nodes"
               + (f"; inexact: {inexact}" if inexact else ""))


@main.command()
@click.argument("graph")
@click.option("-o", "--out", required=True, help="The folder to write (C sources, params.bin, Makefile).")
@click.option("--embed", is_flag=True, help="Compile the parameters into the code instead of params.bin.")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
def codegen(graph, out, embed, force):
    """Write GRAPH's golden model as portable C99: `make -C OUT` builds OUT/golden, which reads a
    bundle's input.npy and writes the output integers (--taps: every layer's, and its events)."""
    from ..codegen import generate_c
    from ..files.write import write_folder_atomically
    from ..graph.ir import load_graph
    check_output(out, force, graph)  # before the work
    g = guard(load_graph, graph)
    files = guard(generate_c, g, embed)
    guard(write_folder_atomically, out, files, force)
    click.echo(f"wrote {out}: the C model of {len(g.nodes)} layers; build it with make -C {out}")


@main.command()
@click.argument("graph")
@input_options
@input_warning_option
@click.option("-o", "--out", required=True, help="Output .npy (integers of the output format).")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
def simulate(graph, input_path, random, shape, seed, input_warning, out, force):
    """Run a saved GRAPH on inputs with the integer engine."""
    check_output(out, force, graph, input_path)  # before the work
    g, x = graph_and_inputs(graph, input_path, random, shape, seed)
    warn_about_input(g.inputs[0], x, input_warning)
    result = guard(g.run, x)
    for note in result.inexact:
        click.echo(f"warning: not bit-exact to the model it came from: {note}", err=True)
    buf = io.BytesIO()
    np.save(buf, result.q, allow_pickle=False)
    guard(write_file_atomically, out, buf.getvalue(), force)
    click.echo(f"wrote {out}: shape {result.q.shape}, format {result.fmt.describe()}")


@main.command()
@click.argument("model")
@click.option("--weights", help="State dict: .pt (loaded with weights_only=True) or .npz.")
@input_options
@input_warning_option
@click.option("--dtype", type=click.Choice(["float64", "float32"]), default="float64", show_default=True,
              help="The torch path's dtype (a QONNX model is executed by qonnx, in float32).")
@input_format_option
@accumulator_option
@rescale_option
@click.option("--json", "json_path", help="Also write the report as JSON.")
@click.option("--force", is_flag=True, help="Replace an existing JSON file.")
def compare(model, weights, input_path, random, shape, seed, input_warning, dtype, input_format,
            accumulator, rescale, json_path, force):
    """Compare the engine with the torch path, layer by layer, or for MODEL.onnx (QONNX) with
    qonnx's execution of it: the first divergence and its cause (exit 1 if they diverge)."""
    if json_path:
        check_output(json_path, force, weights, input_path, model if is_onnx(model) else None)  # before the work
    if is_onnx(model):
        from ..qonnx.compare import compare_qonnx
        proto, graph = from_qonnx_model(model, input_format, accumulator, weights, rescale=rescale)
        if shape is None and random is not None:
            shape = ",".join(map(str, graph.inputs[0].shape))
        x = load_inputs(input_path, random, shape, seed)
        warn_about_input(graph.inputs[0], x, input_warning)
        report = guard(compare_qonnx, proto, graph, x)
    else:
        if rescale is not None:
            raise BadInput("--rescale is for QONNX models (MODEL.onnx); leave it out")
        import torch
        from ..graph.compare import compare as run_compare
        from ..graph.ir import GraphInput
        fmt, acc = parse_format(input_format or "s16.8"), parse_accumulator(accumulator)
        net = load_model(model, weights)
        x = load_inputs(input_path, random, shape, seed)
        warn_about_input(GraphInput("input", x.shape[1:], fmt), x, input_warning)
        report = guard(run_compare, net, x, None, getattr(torch, dtype), fmt, acc)
    click.echo(str(report))
    if json_path:
        text = json.dumps(report.to_dict(), indent=1) + "\n"
        guard(write_file_atomically, json_path, text.encode(), force)
    sys.exit(0 if report.exact else CHECK_FAILED)
