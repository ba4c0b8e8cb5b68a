"""The embedded demo and its training, and the modes table."""
from __future__ import annotations

import math
import sys

import click
import numpy as np

from .main import CHECK_FAILED, BadInput, check_output, command_line, guard, main, progress
from .options import input_warning_option


MAX_EPOCHS = 10_000  # `train --epochs`: the demo's digits learn in 10


@main.command()
def modes():
    """List the rounding and overflow modes with their names in other tools."""
    from ..fixedpoint.modes import MODE_NAMES
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
    from ..demo import run_demo
    check_output(out, force)
    ok = guard(run_demo, out, force, click.echo, progress("writing vectors"))
    sys.exit(0 if ok else CHECK_FAILED)


def positive_rate(name: str, value: float) -> float:
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
@input_warning_option
def train(epochs, batch, lr, float_lr, seed, limit, step_vectors, force, input_warning):
    """Train the demo model bit-exactly in integers (8-bit W/A/G/E/U/BN) and in float."""
    from ..demo import DEMO_DATA, train_comparison
    from ..scheme.quantizers import lr_quantize
    positive_rate("--lr", lr)
    positive_rate("--float-lr", float_lr)
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
        check_output(step_vectors, force)
    guard(train_comparison, epochs, batch, lr, float_lr, seed, limit, click.echo,
           progress("training"), step_vectors, force, command_line(), input_warning)
