"""The `wageubn-sim` command line.

Exit codes: 0 success; 1 a check failed (engine and torch diverge, a bundle does not verify,
the demo's checks fail); 2 bad input (usage, a missing, unreadable or malformed file, a value
out of range, an existing output without --force, an output that cannot be written), with a
message that names the problem and the fix and no traceback; 3 an internal error (a bug), with
its traceback.
"""
from __future__ import annotations

import importlib
import io
import json
import math
import shlex
import sys
import traceback
import warnings
from pathlib import Path

import click
import numpy as np

from . import __version__
from .files.read import UnreadableFile, npz_members, read_npy, read_npz, their_reason
from .files.write import OutputError, refuse_existing, write_file_atomically

CHECK_FAILED = 1
BAD_INPUT = 2
INTERNAL_ERROR = 3
MAX_RANDOM_VALUES = 1 << 27  # --random N --shape S: at most 2**27 values (1 GiB of float64)
INPUT_KINDS = "iuf"  # inputs: integers (of the input format) or floats
MAX_EPOCHS = 10_000  # `train --epochs`: the demo's digits learn in 10


class BadInput(click.ClickException):
    """Bad input: exit code 2, with a message that names the problem and the fix."""

    exit_code = BAD_INPUT


class _Main(click.Group):
    """The command group; an exception no command expected is a bug: its traceback is printed
    and the exit code is 3, so that scripts can tell a crash from a failing check."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit,
                KeyboardInterrupt):
            raise
        except MemoryError:
            raise BadInput("out of memory: the model, the inputs or an option (a batch, --random, "
                           "--depth, --resize, --lanes) ask for more than this machine has; use "
                           "smaller ones") from None
        except Exception:
            traceback.print_exc()
            click.echo("wageubn-sim: internal error (a bug in wageubn-sim, not in your input); "
                       "please report it with the traceback above", err=True)
            sys.exit(INTERNAL_ERROR)


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
            OverflowError, OutputError) as err:
        raise BadInput(str(err)) from None


def _progress(label: str):
    """A wrapper that shows a progress bar (on stderr) while iterating."""
    def wrap(items):
        with click.progressbar(items, label=label, file=sys.stderr) as bar:
            yield from bar
    return wrap


def _parse_format(text: str, option: str = "--input-format"):
    from .fixedpoint.format import Format
    try:
        sign, rest = text[0], text[1:]
        bits, frac = rest.split(".")
        if sign not in "su":
            raise ValueError("it starts with s or u")
        return Format(None if bits == "inf" else int(bits), int(frac), sign == "s")
    except (ValueError, IndexError, TypeError) as err:
        raise BadInput(f"{option} {text!r}: {err}; write it as s<bits>.<frac_bits>, e.g. s16.8") from None


def _parse_accumulator(texts):
    """``[LAYER=]BITS[:SAT|WRAP[:channel_major|kernel_major[:K_SPLIT]]]``, repeated -> the
    ``accumulators`` argument of compile: {layer name: Accumulator}, "*" for every other MAC
    layer; None when none is given."""
    from .engine.registers import Accumulator
    out = {}
    for text in texts or ():
        layer, _, spec = text.rpartition("=")
        parts = spec.split(":")
        try:
            if len(parts) > 4:
                raise ValueError("too many fields")
            acc = Accumulator(int(parts[0]), *(parts[1:3]), *(int(v) for v in parts[3:4]))
        except (ValueError, TypeError) as err:
            raise BadInput(f"--accumulator {text!r}: {err}; write [LAYER=]BITS[:SAT|WRAP[:ORDER[:K_SPLIT]]]") from None
        key = layer or "*"
        if key in out:
            raise BadInput(f"--accumulator names {'every layer' if key == '*' else key} twice")
        out[key] = acc
    return out or None


_accumulator_option = click.option(
    "--accumulator", multiple=True,
    help="Model MAC layers' accumulators: [LAYER=]BITS[:SAT|WRAP[:ORDER[:K_SPLIT]]] (ORDER "
         "channel_major or kernel_major; LAYER a layer's name, e.g. layer1.0.conv1; without it, "
         "every other MAC layer); repeat for several layers; default exact.")


# ---- models and weights -------------------------------------------------------------------

def load_model(spec: str, weights: str | None):
    """``package.module:factory`` -> the torch-path model (float64, so that float64 weights
    stay exact), with a weights file applied."""
    import torch
    from .convert import quantize_model
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise BadInput(f"model {spec!r}: name it as package.module:factory")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except Exception as err:  # the module's own import may raise anything
        raise BadInput(f"model {spec!r} does not import: {type(err).__name__}: {their_reason(err)}") from None
    if not callable(factory):
        raise BadInput(f"model {spec!r} is a {type(factory).__name__}, not a factory to call")
    try:
        model = factory()
    except Exception as err:
        raise BadInput(f"model factory {spec} failed: {type(err).__name__}: {their_reason(err)}") from None
    if not isinstance(model, torch.nn.Module):
        raise BadInput(f"model {spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    model = model.double()
    if weights:
        state = _load_state(Path(weights))
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as err:  # torch lists the mismatches below a heading line
            details = [line.strip() for line in str(err).splitlines()[1:4] if line.strip()]
            raise BadInput(f"weights {weights} do not fit {spec}: "
                           f"{'; '.join(details) or their_reason(err)}") from None
        if missing or unexpected:
            raise BadInput(f"weights {weights} do not fit {spec}: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    return quantize_model(model).eval()


def _load_state(path: Path) -> dict:
    """A state dict of real tensors from .npz (arrays 'state/NAME') or .pt (torch.load with
    weights_only=True: no code runs)."""
    import torch
    fix = "save it with torch.save(model.state_dict(), PATH) or as .npz with arrays state/NAME"
    if not path.is_file():
        raise BadInput(f"weights file {path} does not exist" if not path.exists()
                       else f"weights {path} is not a regular file")
    if path.suffix == ".npz":
        try:
            names = [n for n in npz_members(path, "weights") if n.startswith("state/")]
            arrays = read_npz(path, "weights", names, kinds="iufb")
        except (UnreadableFile, FileNotFoundError) as err:
            raise BadInput(f"{err}; {fix}") from None
        state = {k.removeprefix("state/"): torch.from_numpy(v) for k, v in arrays.items()}
    else:
        try:
            with warnings.catch_warnings():  # torch's notes on pickle protocols are not for users
                warnings.simplefilter("ignore")
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises many kinds on a bad file; none is a bug of ours
            raise BadInput(f"weights {path} is not a state dict that torch.load(weights_only=True) "
                           f"reads ({type(err).__name__}: {their_reason(err)}); {fix}") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        kind = f"a dict with keys {list(state)[:5]}" if isinstance(state, dict) else type(state).__name__
        raise BadInput(f"weights {path} holds {kind}, not a state dict of tensors; {fix}")
    for name, t in state.items():
        if t.is_complex():
            raise BadInput(f"weights {path}: {name} is complex; the model's parameters are real")
        if not t.is_floating_point() and t.numel() and int(t.abs().max()) >= 1 << 53:
            raise BadInput(f"weights {path}: {name} holds integers beyond 2**53, which a float "
                           "parameter cannot hold exactly")
    return state


# ---- inputs -------------------------------------------------------------------------------

def load_inputs(input_path: str | None, random: int | None, shape: str | None, seed: int):
    """Inputs from an .npy (or one-array .npz) file, or ``random`` seeded normal ones."""
    if input_path:
        path = Path(input_path)
        try:
            if path.suffix == ".npz":
                names = npz_members(path, "input file")
                if len(names) != 1:
                    raise BadInput(f"input file {input_path} holds arrays {names[:5]}; give an "
                                   ".npz with exactly one array (N first), or an .npy")
                return read_npz(path, "input file", names, kinds=INPUT_KINDS)[names[0]]
            return read_npy(path, "input file", kinds=INPUT_KINDS)
        except (UnreadableFile, FileNotFoundError) as err:
            raise BadInput(f"{err}; give an .npy of floats, or of integers of the input format") from None
    if random is None or not shape:
        raise BadInput("give inputs: --input FILE.npy, or --random N with --shape C,H,W")
    try:
        dims = tuple(int(v) for v in shape.split(","))
    except ValueError:
        raise BadInput(f"--shape {shape!r}: write it as C,H,W") from None
    if not dims or min(dims) < 1:
        raise BadInput(f"--shape {shape!r}: every size must be at least 1")
    if random * math.prod(dims) > MAX_RANDOM_VALUES:
        raise BadInput(f"--random {random} --shape {shape} asks for {random * math.prod(dims)} values, "
                       f"more than {MAX_RANDOM_VALUES}; use fewer inputs, or save them with np.save "
                       "and pass --input")
    return np.random.default_rng(seed).standard_normal((random, *dims))


_input_options = [
    click.option("--input", "input_path", type=str, help="Inputs as .npy, or .npz with one array (N first)."),
    click.option("--random", type=click.IntRange(1), help="Use N seeded random normal inputs instead."),
    click.option("--shape", type=str, help="Shape of one random input, e.g. 3,32,32."),
    click.option("--seed", type=click.IntRange(0), default=0, show_default=True,
                 help="Seed of the random inputs."),
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


def _output(out, force: bool, *inputs):
    """Check an output path before the work: a real name, not an existing target (without
    --force), and, with or without --force and after symbolic links are resolved, neither one
    of the command's inputs, nor a folder that holds one, nor a path inside one."""
    target = _guard(refuse_existing, out, force)
    resolved = target.resolve()
    for given in inputs:
        if not given:
            continue
        source = Path(given).resolve()
        if source.is_relative_to(resolved):
            raise BadInput(f"output {out} would replace the input {given}; choose another path")
        if resolved.is_relative_to(source):
            raise BadInput(f"output {out} lies inside the input {given}, which it would change; "
                           "choose a path outside it")
    return target


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="wageubn-sim")
def main():
    """wageubn-sim: a bit-exact integer golden model of WAGEUBN networks.

    Exit codes: 0 success, 1 a check failed, 2 bad input (the message says what and how to
    fix it), 3 an internal error (a bug; its traceback is printed)."""


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
    _output(out, force)
    ok = _guard(run_demo, out, force, click.echo, _progress("writing vectors"))
    sys.exit(0 if ok else CHECK_FAILED)


def _positive_rate(name: str, value: float) -> float:
    if not math.isfinite(value) or value <= 0:
        raise BadInput(f"{name} {value}: a learning rate must be a finite number above 0")
    return value


@main.command()
@click.option("--epochs", default=10, show_default=True, type=click.IntRange(1, MAX_EPOCHS))
@click.option("--batch", default=32, show_default=True, type=click.IntRange(2))
@click.option("--lr", default=0.25, show_default=True, type=float, help="Integer training's rate (flr-quantized).")
@click.option("--float-lr", default=0.05, show_default=True, type=float, help="The float baseline's rate.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0))
@click.option("--limit", type=click.IntRange(2), help="Train on the first N digits only.")
@click.option("--step-vectors", help="Write the first step's training bundle into this folder.")
@click.option("--force", is_flag=True, help="Replace an existing --step-vectors folder.")
def train(epochs, batch, lr, float_lr, seed, limit, step_vectors, force):
    """Train the demo model bit-exactly in integers (8-bit W/A/G/E/U/BN) and in float."""
    from .demo import DEMO_DATA, train_comparison
    from .scheme.quantizers import lr_quantize
    _positive_rate("--lr", lr)
    _positive_rate("--float-lr", float_lr)
    held = lr_quantize(lr)
    effective = float(held.q) * 2.0 ** -held.frac_bits
    if effective == 0:
        raise BadInput(f"--lr {lr} rounds to 0 on flr's grid 2**-{held.frac_bits}; give at least "
                       f"{2.0 ** -(held.frac_bits + 1)}")
    if effective != lr:
        click.echo(f"note: --lr {lr} is held as {effective} (flr: s10.9, saturating)", err=True)
    with np.load(DEMO_DATA, allow_pickle=False) as data:  # our own packaged file
        available = len(data["train_labels"])
    digits = min(limit or available, available)
    if batch > digits:
        raise BadInput(f"--batch {batch} is larger than the {digits} training digits; give a "
                       "smaller --batch or a larger --limit")
    if step_vectors:
        _output(step_vectors, force)
    _guard(train_comparison, epochs, batch, lr, float_lr, seed, limit, click.echo,
           _progress("training"), step_vectors, force, _command_line())


_input_format_option = click.option(
    "--input-format", help="Format of the network input (default s16.8; a QONNX model with a "
                           "Quant on its input takes that Quant's format).")


def _is_onnx(model: str) -> bool:
    return model.lower().endswith(".onnx")


def _from_qonnx(model, input_format, accumulator, weights, input_path=None, random=None, shape=None):
    """(the QONNX model as read, its integer graph), for compile and compare."""
    from .graph.qonnx_import import from_qonnx, read_qonnx
    if weights:
        raise BadInput(f"--weights: {model} holds its own weights; leave --weights out")
    if input_path or random is not None or shape:
        raise BadInput(f"{model} needs no example input to compile; leave --input, --random and "
                       "--shape out")
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise BadInput("reading QONNX models needs onnx: pip install 'wageubn-sim[onnx]'") from None
    fmt = _parse_format(input_format) if input_format else None
    proto = _guard(read_qonnx, model)
    return proto, _guard(from_qonnx, proto, fmt, _parse_accumulator(accumulator))


@main.command("compile")
@click.argument("model")
@click.option("--weights", help="State dict: .pt (loaded with weights_only=True) or .npz.")
@input_options
@_input_format_option
@_accumulator_option
@click.option("--fold-bn", "fold_bn", type=click.IntRange(2, 31), metavar="BITS",
              help="Fold each BatchNorm into its conv with BITS-bit multipliers (a different "
                   "datapath: docs/arithmetic.md section 9).")
@click.option("-o", "--out", required=True, help="Graph folder to write.")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
def compile_cmd(model, weights, input_path, random, shape, seed, input_format, accumulator,
                fold_bn, out, force):
    """Compile MODEL into an integer graph folder: MODEL is package.module:factory (a model of
    the torch path's modules, traced on an example input) or a QONNX file MODEL.onnx (from
    Brevitas, FINN, hls4ml or `wageubn-sim export`)."""
    from .graph.fold import fold_batchnorm
    _output(out, force, weights, input_path, model if _is_onnx(model) else None)  # before the work
    if _is_onnx(model):
        graph = _from_qonnx(model, input_format, accumulator, weights, input_path, random, shape)[1]
    else:
        from .graph.importer import compile_model
        fmt, acc = _parse_format(input_format or "s16.8"), _parse_accumulator(accumulator)
        net = load_model(model, weights)
        x = load_inputs(input_path, random or 1, shape, seed)
        graph = _guard(compile_model, net, x, fmt, acc)
    if fold_bn is not None:
        graph = _guard(fold_batchnorm, graph, fold_bn)
    _guard(graph.save, out, force)
    click.echo(f"wrote {out}: {len(graph.nodes)} nodes")


@main.command()
@click.argument("graph")
@click.option("-o", "--out", required=True, help="The .onnx file to write.")
@click.option("--batch", type=click.IntRange(1), default=1, show_default=True,
              help="The batch size the model declares (qonnx executes only declared shapes).")
@click.option("--allow-inexact", is_flag=True,
              help="Export what QONNX cannot express exactly (narrow accumulators, the integer "
                   "BatchNorm's division) as qonnx computes it; the file's metadata lists each.")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
def export(graph, out, batch, allow_inexact, force):
    """Export GRAPH as a QONNX model (IntQuant and Trunc registers) that qonnx executes and
    FINN and hls4ml read."""
    from .graph.ir import load_graph
    _output(out, force, graph)  # before the work
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise BadInput("exporting QONNX needs onnx: pip install 'wageubn-sim[onnx]'") from None
    g = _guard(load_graph, graph)
    model = _guard(g.to_qonnx, out, batch, allow_inexact, force)
    inexact = next((p.value for p in model.metadata_props if p.key == "wageubn_sim.inexact"), None)
    click.echo(f"wrote {out}: {len(model.graph.node)} ONNX nodes"
               + (f"; inexact: {inexact}" if inexact else ""))


@main.command()
@click.argument("graph")
@input_options
@click.option("-o", "--out", required=True, help="Output .npy (integers of the output format).")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
def simulate(graph, input_path, random, shape, seed, out, force):
    """Run a saved GRAPH on inputs with the integer engine."""
    _output(out, force, graph, input_path)  # before the work
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
@click.option("--dtype", type=click.Choice(["float64", "float32"]), default="float64", show_default=True,
              help="The torch path's dtype (a QONNX model is executed by qonnx, in float32).")
@_input_format_option
@_accumulator_option
@click.option("--json", "json_path", help="Also write the report as JSON.")
@click.option("--force", is_flag=True, help="Replace an existing JSON file.")
def compare(model, weights, input_path, random, shape, seed, dtype, input_format, accumulator,
            json_path, force):
    """Compare the engine with the torch path, layer by layer, or for MODEL.onnx (QONNX) with
    qonnx's execution of it: the first divergence and its cause (exit 1 if they diverge)."""
    if json_path:
        _output(json_path, force, weights, input_path, model if _is_onnx(model) else None)  # before the work
    if _is_onnx(model):
        from .graph.qonnx_compare import compare_qonnx
        proto, graph = _from_qonnx(model, input_format, accumulator, weights)
        if shape is None and random is not None:
            shape = ",".join(map(str, graph.inputs[0].shape))
        x = load_inputs(input_path, random, shape, seed)
        report = _guard(compare_qonnx, proto, graph, x)
    else:
        import torch
        from .graph.compare import compare as run_compare
        fmt, acc = _parse_format(input_format or "s16.8"), _parse_accumulator(accumulator)
        net = load_model(model, weights)
        x = load_inputs(input_path, random, shape, seed)
        report = _guard(run_compare, net, x, None, getattr(torch, dtype), fmt, acc)
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
def vectors(graph, input_path, random, shape, seed, out, layout, lanes, word_width, formats, depth,
            fill, hex_addressing, force):
    """Write a test-vector bundle (manifest + memory images) for GRAPH on inputs."""
    from .vectors.bundle import write_bundle
    _output(out, force, graph, input_path)  # before the work
    try:
        fill_word = int(fill, 0)
    except ValueError:
        raise BadInput(f"--fill {fill!r}: give a word as a number, e.g. 0 or 0xdead") from None
    g, x = _graph_and_inputs(graph, input_path, random, shape, seed)
    _guard(write_bundle, g, x, out, layout, lanes, [k.strip() for k in formats.split(",")], force,
           seed if input_path is None else None, _command_line(), _progress("writing vectors"),
           word_width, depth, fill_word, hex_addressing)
    click.echo(f"wrote {out}")


@main.command()
@click.argument("bundle")
@click.option("--graph", "graph_path", help="Also check that the bundle is this graph's: layers, "
                                            "params, parameter values, input, outputs.")
def verify(bundle, graph_path):
    """Check a bundle from its files alone: every file listed and matching its sha256, the
    network recomputed from the input and parameters, every layer, tensor, format and event
    count compared (exit 1 listing every failure; 2 if BUNDLE is no bundle)."""
    from .graph.ir import load_graph
    from .vectors.verify import verify_bundle
    graph = _guard(load_graph, graph_path) if graph_path else None
    report = _guard(verify_bundle, bundle, graph)
    click.echo(str(report))
    sys.exit(0 if report.ok else CHECK_FAILED)


_data_options = [
    click.option("--data", help="A dataset, streamed in batches: .npy (N first; memory-mapped), .npz "
                                "(one array, and optionally 'labels'), a folder of .npy files (each a batch "
                                "or one sample), or an ImageFolder (ROOT/CLASS/IMAGE) with --crop."),
    click.option("--labels", help="Class labels for --data FILE.npy: an .npy of ints, one per sample."),
    click.option("--resize", type=click.IntRange(1), help="Images: resize the shorter side to N (bilinear)."),
    click.option("--crop", type=click.IntRange(1), help="Images: center-crop N x N (the graph's input size)."),
    click.option("--mean", help="Images: per-channel means, e.g. 0.485,0.456,0.406 (after scaling to 0..1)."),
    click.option("--std", help="Images: per-channel standard deviations, e.g. 0.229,0.224,0.225."),
    click.option("--batch", type=click.IntRange(1), default=64, show_default=True, help="Samples per batch."),
    click.option("--shard-size", type=click.IntRange(1), default=512, show_default=True,
                 help="Samples per shard (one task on a cluster)."),
    click.option("--workers", type=click.IntRange(1), help="Run on a local Dask cluster of N processes "
                                                           "(at most the cores, unless --force-workers)."),
    click.option("--force-workers", is_flag=True, help="Start --workers even beyond this machine's cores."),
    click.option("--scheduler", help="Run on the Dask cluster at tcp://HOST:PORT."),
]


def data_options(fn):
    for option in reversed(_data_options):
        fn = option(fn)
    return fn


def _floats(text, option):
    try:
        return [float(v) for v in text.split(",")] if text else None
    except ValueError:
        raise BadInput(f"{option} {text!r}: give numbers separated by commas") from None


def _dataset(g, data, labels, resize, crop, mean, std, input_path=None, random=None, shape=None, seed=0):
    """--data (streamed), or the inputs of --input/--random (in memory)."""
    from .data.sources import Preprocess, open_data
    if data is None:
        if labels or crop or resize:
            raise BadInput("--labels, --crop and --resize go with --data")
        if shape is None and random is not None:
            shape = ",".join(map(str, g.inputs[0].shape))
        return load_inputs(input_path, random, shape, seed)
    if input_path or random is not None:
        raise BadInput("give --data, or --input/--random, not both")
    preprocess = None
    if crop is not None:
        channels = g.inputs[0].shape[0]
        preprocess = _guard(Preprocess, channels, resize, crop, _floats(mean, "--mean"), _floats(std, "--std"))
        if preprocess.shape != tuple(g.inputs[0].shape):
            raise BadInput(f"--crop {crop} gives images of {preprocess.shape}, the graph's input is "
                           f"{tuple(g.inputs[0].shape)}")
    source = _guard(open_data, data, g.inputs[0].shape, preprocess, labels)
    if source.sample_shape != tuple(g.inputs[0].shape):
        raise BadInput(f"--data {data} holds samples of shape {source.sample_shape}, the graph's input "
                       f"is {tuple(g.inputs[0].shape)}")
    return source


def _progress_line(label: str):
    """A data.shards.Progress that reports images and images/s on stderr."""
    from .data.shards import Progress

    def report(done, total, seconds):
        rate = done / seconds if seconds > 0 else 0.0
        click.echo(f"\r{label}: {done}{'/' + str(total) if total else ''} samples, {rate:.0f}/s",
                   err=True, nl=False)
        if total and done >= total:
            click.echo("", err=True)
    return lambda total=None: Progress(total, report)


def _check_cluster(workers, force_workers, scheduler) -> None:
    """--workers, --force-workers and --scheduler, checked before any work."""
    from .data.shards import check_workers, scheduler_address
    if force_workers and workers is None:
        raise BadInput("--force-workers goes with --workers")
    if workers is not None:
        _guard(check_workers, workers, force_workers)
    if scheduler is not None:
        _guard(scheduler_address, scheduler)


def _on_cluster(fn, workers, force_workers, scheduler):
    """fn(client) with the Dask client --workers/--scheduler ask for (None: serial)."""
    from .data.shards import dask_client
    with dask_client(workers, scheduler, force_workers) as client:
        return fn(client)


@main.command()
@click.argument("graph")
@input_options
@data_options
@click.option("-o", "--out", help="Folder for audit.json, .csv, .md and .html.")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
def audit(graph, input_path, random, shape, seed, data, labels, resize, crop, mean, std, batch,
          shard_size, workers, force_workers, scheduler, out, force):
    """Audit the register widths of GRAPH over inputs or a whole dataset (--data; serial, or on
    Dask with --workers/--scheduler: the same bytes either way); print the table."""
    from .files.write import write_folder_atomically
    from .graph.ir import load_graph
    from .reports.audit import audit as run_audit
    if out:
        _output(out, force, graph, input_path, data, labels)  # before the work
    _check_cluster(workers, force_workers, scheduler)
    g = _guard(load_graph, graph)
    source = _dataset(g, data, labels, resize, crop, mean, std, input_path, random, shape, seed)
    total = len(source) if hasattr(source, "__len__") else None
    report = _guard(_on_cluster, lambda client: run_audit(g, source, client, batch, shard_size,
                                                          _progress_line("audit")(total)),
                    workers, force_workers, scheduler)
    click.echo(report.to_table().rstrip())
    if out:
        files = {"audit.json": report.to_json(), "audit.csv": report.to_csv(),
                 "audit.md": report.to_markdown(), "audit.html": report.to_html()}
        _guard(write_folder_atomically, out, {k: v.encode() for k, v in files.items()}, force)
        click.echo(f"wrote {out}")


@main.command()
@click.argument("graph")
@data_options
@click.option("--criterion", default="exact", show_default=True,
              help="What the narrower registers must keep: exact (bit-identical outputs), lsb:N "
                   "(within N output LSBs), top1[:F] (the same top-1 class on a fraction F of the "
                   "samples) or accuracy[:D] (top-1 accuracy at most D below, with labels).")
@click.option("--registers", default="accumulator,output", show_default=True,
              help="Which registers to size: accumulator (MAC layers), output (layers with an output register).")
@click.option("--layers", help="Only these layers (names, comma-separated).")
@click.option("--overflow", default="SAT", show_default=True,
              help="Overflow modes to try, comma-separated: SAT, SAT_SYM, WRAP.")
@click.option("--min-bits", type=click.IntRange(1), default=2, show_default=True,
              help="The narrowest width to try.")
@click.option("-o", "--out", required=True,
              help="Folder for sweep.json, sweep.txt, sweep.html and graph/ (the proposed graph).")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
def sweep(graph, data, labels, resize, crop, mean, std, batch, shard_size, workers, force_workers,
          scheduler, criterion, registers, layers, overflow, min_bits, out, force):
    """Find, per layer, the narrowest accumulator and output registers that keep GRAPH's outputs
    on --data within --criterion (each layer alone, then all together); write the report and
    the proposed graph (ready for `vectors`)."""
    from .files.write import write_folder_atomically
    from .graph.ir import load_graph
    from .reports.sweep import Criterion, sweep as run_sweep
    _output(out, force, graph, data, labels)  # before the work
    if data is None:
        raise BadInput("give the dataset: --data PATH")
    crit = _guard(Criterion.parse, criterion)
    _check_cluster(workers, force_workers, scheduler)
    g = _guard(load_graph, graph)
    source = _dataset(g, data, labels, resize, crop, mean, std)
    report, proposed = _guard(_on_cluster, lambda client: run_sweep(
        g, source, crit, [r.strip() for r in registers.split(",")],
        [n.strip() for n in layers.split(",")] if layers else None,
        [m.strip().upper() for m in overflow.split(",")], min_bits, client, batch, shard_size,
        lambda label: _progress_line(label)(len(source))), workers, force_workers, scheduler)
    click.echo(report.to_table().rstrip())
    files = {"sweep.json": report.to_json(), "sweep.txt": report.to_table(), "sweep.html": report.to_html()}
    files = {k: v.encode() for k, v in files.items()}
    files.update({f"graph/{k}": v for k, v in proposed.files().items()})
    _guard(write_folder_atomically, out, files, force)
    click.echo(f"wrote {out}")
    sys.exit(0 if report.combined_passes else CHECK_FAILED)


if __name__ == "__main__":
    main()
