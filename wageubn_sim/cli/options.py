"""The options and arguments commands share, each parsed and checked before the work: formats,
accumulators, models and their weights, inputs (files or seeded random ones), datasets and
their preprocessing, Dask clusters."""
from __future__ import annotations

import importlib
import math
import warnings
from pathlib import Path

import click
import numpy as np

from ..files.read import UnreadableFile, npz_members, read_npy, read_npz, their_reason
from ..graph.ir import INPUT_WARNING_FRACTION
from .main import BadInput, guard


MAX_RANDOM_VALUES = 1 << 27  # --random N --shape S: at most 2**27 values (1 GiB of float64)


INPUT_KINDS = "iuf"  # inputs: integers (of the input format) or floats


def parse_format(text: str, option: str = "--input-format"):
    from ..fixedpoint.format import Format
    try:
        sign, rest = text[0], text[1:]
        bits, frac = rest.split(".")
        if sign not in "su":
            raise ValueError("it starts with s or u")
        return Format(None if bits == "inf" else int(bits), int(frac), sign == "s")
    except (ValueError, IndexError, TypeError) as err:
        raise BadInput(f"{option} {text!r}: {err}; write it as s<bits>.<frac_bits>, e.g. s16.8") from None


def parse_accumulator(texts):
    """``[LAYER=]BITS[:SAT|WRAP[:channel_major|kernel_major[:K_SPLIT]]]``, repeated -> the
    ``accumulators`` argument of compile: {layer name: Accumulator}, "*" for every other MAC
    layer; None when none is given."""
    from ..engine.registers import Accumulator
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


accumulator_option = click.option(
    "--accumulator", multiple=True,
    help="Model MAC layers' accumulators: [LAYER=]BITS[:SAT|WRAP[:ORDER[:K_SPLIT]]] (ORDER "
         "channel_major or kernel_major; LAYER a layer's name, e.g. layer1.0.conv1; without it, "
         "every other MAC layer); repeat for several layers; default exact.")


def load_model(spec: str, weights: str | None):
    """``package.module:factory`` -> the torch-path model (float64, so that float64 weights
    stay exact), with a weights file applied."""
    import torch
    from ..convert import quantize_model
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
        state = load_state(Path(weights))
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


def load_state(path: Path) -> dict:
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


input_warning_option = click.option(
    "--input-warning", "input_warning", type=click.FloatRange(0, 1), default=INPUT_WARNING_FRACTION,
    show_default=True,
    metavar="FRACTION", help="Warn when more than this fraction of the input values saturates or "
                             "underflows to zero in the graph's input format.")


def warn(text: str | None) -> None:
    if text:
        click.echo(f"warning: {text}", err=True)


def warn_about_input(spec, x, fraction: float) -> None:
    """Warn on stderr when the float input ``x`` saturates or underflows in the input register
    ``spec`` (a `graph.ir.GraphInput`) on more than ``fraction`` of its values."""
    warn(guard(spec.saturation_warning, x, fraction))


def graph_and_inputs(path, input_path, random, shape, seed):
    """A saved graph and its inputs; random inputs take the graph's input shape by default."""
    from ..graph.ir import load_graph
    graph = guard(load_graph, path)
    if shape is None and random is not None:
        shape = ",".join(map(str, graph.inputs[0].shape))
    return graph, load_inputs(input_path, random, shape, seed)


input_format_option = click.option(
    "--input-format", help="Format of the network input (default s16.8; a QONNX model with a "
                           "Quant on its input takes that Quant's format).")


def is_onnx(model: str) -> bool:
    return model.lower().endswith(".onnx")


rescale_option = click.option(
    "--rescale", metavar="thresholds|multiplier:BITS",
    help="QONNX: how a float chain (float scales, bias, BatchNorm up to the next Quant) becomes "
         "integers: exact thresholds (default, up to 8 output bits; 16-bit multipliers beyond) "
         "or BITS-bit fixed-point multipliers (not bit-exact; warned and recorded).")


def from_qonnx_model(model, input_format, accumulator, weights, input_path=None, random=None, shape=None,
                     rescale=None):
    """(the QONNX model as read, its integer graph), for compile and compare; what the import
    could not make exact is warned on stderr."""
    from ..qonnx import from_qonnx, read_qonnx
    if weights:
        raise BadInput(f"--weights: {model} holds its own weights; leave --weights out")
    if input_path or random is not None or shape:
        raise BadInput(f"{model} needs no example input to compile; leave --input, --random and "
                       "--shape out")
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise BadInput("reading QONNX models needs onnx: pip install 'wageubn-sim[onnx]'") from None
    fmt = parse_format(input_format) if input_format else None
    proto = guard(read_qonnx, model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        graph = guard(from_qonnx, proto, fmt, parse_accumulator(accumulator), rescale)
    for w in caught:
        click.echo(f"warning: {w.message}", err=True)
    return proto, graph


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


def floats(text, option):
    try:
        return [float(v) for v in text.split(",")] if text else None
    except ValueError:
        raise BadInput(f"{option} {text!r}: give numbers separated by commas") from None


def dataset(g, data, labels, resize, crop, mean, std, input_path=None, random=None, shape=None, seed=0):
    """--data (streamed), or the inputs of --input/--random (in memory)."""
    from ..data.sources import Preprocess, open_data
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
        preprocess = guard(Preprocess, channels, resize, crop, floats(mean, "--mean"), floats(std, "--std"))
        if preprocess.shape != tuple(g.inputs[0].shape):
            raise BadInput(f"--crop {crop} gives images of {preprocess.shape}, the graph's input is "
                           f"{tuple(g.inputs[0].shape)}")
    source = guard(open_data, data, g.inputs[0].shape, preprocess, labels)
    if source.sample_shape != tuple(g.inputs[0].shape):
        raise BadInput(f"--data {data} holds samples of shape {source.sample_shape}, the graph's input "
                       f"is {tuple(g.inputs[0].shape)}")
    return source


def progress_line(label: str):
    """A data.shards.Progress that reports images and images/s on stderr."""
    from ..data.shards import Progress

    def report(done, total, seconds):
        rate = done / seconds if seconds > 0 else 0.0
        click.echo(f"\r{label}: {done}{'/' + str(total) if total else ''} samples, {rate:.0f}/s",
                   err=True, nl=False)
        if total and done >= total:
            click.echo("", err=True)
    return lambda total=None: Progress(total, report)


def check_cluster(workers, force_workers, scheduler) -> None:
    """--workers, --force-workers and --scheduler, checked before any work."""
    from ..data.shards import check_workers, scheduler_address
    if force_workers and workers is None:
        raise BadInput("--force-workers goes with --workers")
    if workers is not None:
        guard(check_workers, workers, force_workers)
    if scheduler is not None:
        guard(scheduler_address, scheduler)


def on_cluster(fn, workers, force_workers, scheduler):
    """fn(client) with the Dask client --workers/--scheduler ask for (None: serial)."""
    from ..data.shards import dask_client
    with dask_client(workers, scheduler, force_workers) as client:
        return fn(client)
