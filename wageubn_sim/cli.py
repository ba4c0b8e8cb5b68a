"""The `wageubn-sim` command line."""
from __future__ import annotations

import click

from . import __version__


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
@click.option("--seed", default=0, show_default=True, help="Seed of the model and its input.")
def demo(seed: int):
    """Quantize a small residual CNN, run one training step and check it against the integers."""
    from .demo import run_demo
    ok = run_demo(seed, echo=click.echo)
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
