"""The one error type every layer shares: a broken invariant of wageubn-sim itself.

Bad input is a ValueError (or OverflowError) whose message names the file, field or option
and the fix; the command line turns it into exit code 2. An `InternalError` is raised where a
check guards what our own code guarantees (a divisor the engine computed, a shape it derived):
reaching it is a bug, so the command line keeps its traceback and exits 3, and never blames
the user's input for it.
"""


class InternalError(RuntimeError):
    """A broken invariant of wageubn-sim (a bug), never bad input."""
