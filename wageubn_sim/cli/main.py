"""The command group and what every command shares: the exit codes and their rule (bad input
exit 2 with a message, a failed check 1, a bug 3 with its traceback), the library's input errors
turned into exit 2 (`guard`), an output checked before the work (`check_output`)."""
from __future__ import annotations

import shlex
import sys
import traceback
from pathlib import Path

import click

from ..files.write import OutputError, refuse_existing
from ..version import __version__


CHECK_FAILED = 1


BAD_INPUT = 2


INTERNAL_ERROR = 3


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


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="wageubn-sim")
def main():
    """wageubn-sim: a bit-exact integer golden model of WAGEUBN networks.

    Exit codes: 0 success, 1 a check failed, 2 bad input (the message says what and how to
    fix it), 3 an internal error (a bug; its traceback is printed)."""
    from ..memory import keep_freed_memory
    keep_freed_memory()  # the command's memory policy (wageubn_sim/memory.py)


def command_line() -> str:
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


def guard(fn, *args, **kwargs):
    """Run fn, turning the library's input errors into exit code 2."""
    from ..graph.importer import UnsupportedLayer
    from ..vectors.manifest import BundleError
    try:
        return fn(*args, **kwargs)
    except (FileExistsError, FileNotFoundError, UnsupportedLayer, BundleError, ValueError,
            OverflowError, OutputError) as err:
        raise BadInput(str(err)) from None


def progress(label: str):
    """A wrapper that shows a progress bar (on stderr) while iterating."""
    def wrap(items):
        with click.progressbar(items, label=label, file=sys.stderr) as bar:
            yield from bar
    return wrap


def check_output(out, force: bool, *inputs):
    """Check an output path before the work: a real name, not an existing target (without
    --force), and, with or without --force and after symbolic links are resolved, neither one
    of the command's inputs, nor a folder that holds one, nor a path inside one."""
    target = guard(refuse_existing, out, force)
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
