"""The `wageubn-sim` command line.

Exit codes: 0 success; 1 a check failed (engine and torch diverge, a bundle does not verify,
the demo's checks fail); 2 bad input (usage, missing or malformed files, an existing output
without --force, a model spec that does not import).
"""
from __future__ import annotations

import importlib
import io
import json
import shlex
import sys
from pathlib import Path

import click
import numpy as np

from . import __version__
from ._files import refuse_existing, write_file_atomically

CHECK_FAILED = 1


class BadInput(click.ClickException):
    """Bad input: exit code 2, with a message that names the problem and the fix."""

    exit_code = 2


def _command_line() -> str:
    """The running command, rebuilt from its parsed parameters (for manifests)."""
    ctx = click.get_current_context()
    words = ["wageubn-sim", ctx.info_name]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if value is None or value is False:
            continue
        if isinstance(param, click.Argument):
            words.append(str(value))
        elif value is True:
            words.append(param.opts[0])
        else:
            words += [param.opts[-1] if param.opts[-1].startswith("--") else param.opts[0], str(value)]
    return shlex.join(words)


def _guard(fn, *args, **kwargs):
    """Run fn, turning the library's input errors into exit code 2."""
    from .graph.importer import UnsupportedLayer
    from .vectors.verify import BundleError
    try:
        return fn(*args, **kwargs)
    except (FileExistsError, FileNotFoundError, UnsupportedLayer, BundleError, ValueError,
            OverflowError, TypeError) as err:
        raise BadInput(str(err)) from None


def _progress(label: str):
    """A wrapper that shows a progress bar (on stderr) while iterating."""
    def wrap(items):
        with click.progressbar(items, label=label, file=sys.stderr) as bar:
            yield from bar
    return wrap


def _parse_format(text: str):
    from .fixedpoint.format import Format
    try:
        sign, rest = text[0], text[1:]
        bits, frac = rest.split(".")
        if sign not in "su":
            raise ValueError
        return Format(None if bits == "inf" else int(bits), int(frac), sign == "s")
    except (ValueError, IndexError):
        raise BadInput(f"format {text!r}: write it as s<bits>.<frac_bits>, e.g. s16.8") from None


def _parse_accumulator(text: str | None):
    """``BITS[:SAT|WRAP[:channel_major|kernel_major[:K_SPLIT]]]`` -> an Accumulator, for every
    MAC layer."""
    if not text:
        return None
    from .engine.registers import Accumulator
    parts = text.split(":")
    try:
        return Accumulator(int(parts[0]), *(parts[1:3]), *(int(v) for v in parts[3:4]))
    except (ValueError, TypeError) as err:
        raise BadInput(f"--accumulator {text!r}: {err}; write BITS[:SAT|WRAP[:ORDER[:K_SPLIT]]]") from None


_accumulator_option = click.option(
    "--accumulator", help="Model every MAC layer's accumulator: BITS[:SAT|WRAP[:ORDER[:K_SPLIT]]] "
                          "(ORDER channel_major or kernel_major); default exact.")


def load_model(spec: str, weights: str | None):
    """``package.module:factory`` -> the torch-path model, with a weights file applied."""
    import torch
    from .convert import quantize_model
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise BadInput(f"model {spec!r}: name it as package.module:factory")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise BadInput(f"model {spec!r} does not import: {err}") from None
    model = factory()
    if not isinstance(model, torch.nn.Module):
        raise BadInput(f"model {spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    if weights:
        path = Path(weights)
        if not path.is_file():
            raise BadInput(f"weights file {weights} does not exist")
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                state = {k.removeprefix("state/"): torch.from_numpy(data[k]) for k in data.files
                         if k.startswith("state/")}
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise BadInput(f"weights {weights} do not fit {spec}: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    return quantize_model(model).eval()


def load_inputs(input_path: str | None, random: int | None, shape: str | None, seed: int):
    if input_path:
        path = Path(input_path)
        if not path.is_file():
            raise BadInput(f"input file {input_path} does not exist")
        try:
            data = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as err:
            raise BadInput(f"{input_path} is not a numpy file: {err}") from None
        if isinstance(data, np.ndarray):
            return data
        with data:
            if len(data.files) != 1:
                raise BadInput(f"{input_path} holds {data.files}; give an .npz with one array")
            return data[data.files[0]]
    if random is None or not shape:
        raise BadInput("give inputs: --input FILE.npy, or --random N with --shape C,H,W")
    try:
        dims = tuple(int(v) for v in shape.split(","))
    except ValueError:
        raise BadInput(f"--shape {shape!r}: write it as C,H,W") from None
    return np.random.default_rng(seed).standard_normal((random, *dims))


_input_options = [
    click.option("--input", "input_path", type=str, help="Inputs as .npy, or .npz with one array (N first)."),
    click.option("--random", type=int, help="Use N seeded random normal inputs instead."),
    click.option("--shape", type=str, help="Shape of one random input, e.g. 3,32,32."),
    click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random inputs."),
]


def input_options(fn):
    for option in reversed(_input_options):
        fn = option(fn)
    return fn


def _graph_and_inputs(path, input_path, random, shape, seed):
    """A saved graph and its inputs; random inputs take the graph's input shape by default."""
    from .graph.ir import load_graph
    graph = _guard(load_graph, path)
    if shape is None and random is not None:
        shape = ",".join(map(str, graph.inputs[0].shape))
    return graph, load_inputs(input_path, random, shape, seed)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="wageubn-sim")
def main():
    """wageubn-sim: a bit-exact integer golden model of WAGEUBN networks."""


@main.command()
def modes():
    """List the rounding and overflow modes with their names in other tools."""
    from .fixedpoint.modes import MODE_NAMES
    tools = ["ap_fixed", "APyTypes", "MATLAB", "QONNX"]
    click.echo(f"{'mode':<22}" + "".join(f"{t:<14}" for t in tools))
    for enum_cls, table in MODE_NAMES.items():
        for member, names in table.items():
            label = f"{enum_cls.__name__}.{member.name}"
            click.echo(f"{label:<22}" + "".join(f"{names[t] or '-':<14}" for t in tools))


@main.command()
@click.option("-o", "--out", default="wageubn-demo", show_default=True, help="Output folder.")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
def demo(out, force):
    """Run the embedded demo offline: compile, compare, write vectors and the audit."""
    from .demo import run_demo

    ok = _guard(run_demo, out, force, click.echo, _progress("writing vectors"))
    sys.exit(0 if ok else CHECK_FAILED)


@main.command()
@click.option("--epochs", default=10, show_default=True, type=click.IntRange(1))
@click.option("--batch", default=32, show_default=True, type=click.IntRange(2))
@click.option("--lr", default=0.25, show_default=True, type=float, help="Integer training's rate (flr-quantized).")
@click.option("--float-lr", default=0.05, show_default=True, type=float, help="The float baseline's rate.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--limit", type=click.IntRange(2), help="Train on the first N digits only.")
@click.option("--step-vectors", help="Write the first step's training bundle into this folder.")
@click.option("--force", is_flag=True, help="Replace an existing --step-vectors folder.")
def train(epochs, batch, lr, float_lr, seed, limit, step_vectors, force):
    """Train the demo model bit-exactly in integers (8-bit W/A/G/E/U/BN) and in float."""
    from .demo import train_comparison
    _guard(train_comparison, epochs, batch, lr, float_lr, seed, limit, click.echo,
           _progress("training"), step_vectors, force, _command_line())


@main.command("compile")
@click.argument("model")
@click.option("--weights", help="State dict: .pt (loaded with weights_only=True) or .npz.")
@input_options
@click.option("--input-format", default="s16.8", show_default=True, help="Format of the network input.")
@_accumulator_option
@click.option("--fold-bn", "fold_bn", type=click.IntRange(2, 31), metavar="BITS",
              help="Fold each BatchNorm into its conv with BITS-bit multipliers (a different "
                   "datapath: docs/arithmetic.md section 9).")
@click.option("-o", "--out", required=True, help="Graph folder to write.")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
def compile_cmd(model, weights, input_path, random, shape, seed, input_format, accumulator,
                fold_bn, out, force):
    """Compile MODEL (package.module:factory) into an integer graph folder."""
    from .graph.fold import fold_batchnorm
    from .graph.importer import compile_model
    net = load_model(model, weights)
    x = load_inputs(input_path, random or 1, shape, seed)
    graph = _guard(compile_model, net, x, _parse_format(input_format), _parse_accumulator(accumulator))
    if fold_bn is not None:
        graph = _guard(fold_batchnorm, graph, fold_bn)
    _guard(graph.save, out, force)
    click.echo(f"wrote {out}: {len(graph.nodes)} nodes")


@main.command()
@click.argument("graph")
@input_options
@click.option("-o", "--out", required=True, help="Output .npy (integers of the output format).")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
def simulate(graph, input_path, random, shape, seed, out, force):
    """Run a saved GRAPH on inputs with the integer engine."""
    _guard(refuse_existing, out, force)  # before the work
    g, x = _graph_and_inputs(graph, input_path, random, shape, seed)
    result = _guard(g.run, x)
    buf = io.BytesIO()
    np.save(buf, result.q, allow_pickle=False)
    _guard(write_file_atomically, out, buf.getvalue(), force)
    click.echo(f"wrote {out}: shape {result.q.shape}, format {result.fmt.describe()}")


@main.command()
@click.argument("model")
@click.option("--weights", help="State dict: .pt (loaded with weights_only=True) or .npz.")
@input_options
@click.option("--dtype", type=click.Choice(["float64", "float32"]), default="float64", show_default=True)
@click.option("--input-format", default="s16.8", show_default=True)
@_accumulator_option
@click.option("--json", "json_path", help="Also write the report as JSON.")
@click.option("--force", is_flag=True, help="Replace an existing JSON file.")
def compare(model, weights, input_path, random, shape, seed, dtype, input_format, accumulator,
            json_path, force):
    """Compare the engine with the torch path, layer by layer (exit 1 if they diverge)."""
    import torch
    from .graph.compare import compare as run_compare
    if json_path:
        _guard(refuse_existing, json_path, force)  # before the work
    net = load_model(model, weights)
    x = load_inputs(input_path, random, shape, seed)
    report = _guard(run_compare, net, x, None, getattr(torch, dtype), _parse_format(input_format),
                    _parse_accumulator(accumulator))
    click.echo(str(report))
    if json_path:
        text = json.dumps(report.to_dict(), indent=1) + "\n"
        _guard(write_file_atomically, json_path, text.encode(), force)
    sys.exit(0 if report.exact else CHECK_FAILED)


@main.command()
@click.argument("graph")
@input_options
@click.option("-o", "--out", required=True, help="Bundle folder to write.")
@click.option("--layout", type=click.Choice(["NCHW", "NHWC"]), default="NCHW", show_default=True)
@click.option("--lanes", type=int, default=1, show_default=True, help="Values packed per word (lane 0 in the LSBs).")
@click.option("--word-width", type=int, help="Bits per memory word (default: lanes x value width; "
                                             "wider words are zero-padded above the last lane).")
@click.option("--formats", default="readmemh,coe,mif,npy", show_default=True, help="File kinds to write.")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
def vectors(graph, input_path, random, shape, seed, out, layout, lanes, word_width, formats, force):
    """Write a test-vector bundle (manifest + memory images) for GRAPH on inputs."""
    from .vectors.bundle import write_bundle
    g, x = _graph_and_inputs(graph, input_path, random, shape, seed)
    _guard(write_bundle, g, x, out, layout, lanes, [k.strip() for k in formats.split(",")], force,
           seed if input_path is None else None, _command_line(), _progress("writing vectors"),
           word_width)
    click.echo(f"wrote {out}")


@main.command()
@click.argument("bundle")
def verify(bundle):
    """Check a bundle: schema, sha256 of every file, and every layer recomputed (exit 1 on failure)."""
    from .vectors.verify import verify_bundle
    report = _guard(verify_bundle, bundle)
    click.echo(str(report))
    sys.exit(0 if report.ok else CHECK_FAILED)


@main.command()
@click.argument("graph")
@input_options
@click.option("-o", "--out", help="Folder for audit.json, .csv, .md and .html.")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
def audit(graph, input_path, random, shape, seed, out, force):
    """Audit the register widths of GRAPH over inputs; print the table."""
    from ._files import write_folder_atomically
    from .reports.audit import audit as run_audit
    g, x = _graph_and_inputs(graph, input_path, random, shape, seed)
    report = _guard(run_audit, g, x)
    click.echo(report.to_table().rstrip())
    if out:
        files = {"audit.json": report.to_json(), "audit.csv": report.to_csv(),
                 "audit.md": report.to_markdown(), "audit.html": report.to_html()}
        _guard(write_folder_atomically, out, {k: v.encode() for k, v in files.items()}, force)
        click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
