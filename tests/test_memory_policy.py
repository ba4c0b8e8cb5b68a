"""The freed-memory policy (`wageubn_sim.memory`): importing the package changes nothing
process-wide; the command line applies the policy on glibc, and an API user opts in with one
call; it is left alone when the user asks or set glibc's own variables."""
import os
import platform
import subprocess
import sys

import pytest

# mallopt recorded: the package is imported with ctypes' CDLL watched
WATCH = """
import ctypes
calls = []
class Watched:
    def __init__(self, *a, **k):
        self._lib = Real(*a, **k)
    def __getattr__(self, name):
        real = getattr(self._lib, name)
        if name != "mallopt":
            return real
        def mallopt(*args):
            calls.append(args)
            return real(*args)
        return mallopt
Real, ctypes.CDLL = ctypes.CDLL, Watched
"""
PROBES = {"import": WATCH + "import wageubn_sim; print(calls == [], wageubn_sim.memory.applied())",
          "api": WATCH + "import wageubn_sim; print(wageubn_sim.keep_freed_memory(), len(calls))",
          "cli": WATCH + "import sys\nfrom wageubn_sim.cli import main\nsys.argv = ['wageubn-sim', 'modes']\n"
                         "import wageubn_sim.memory as m\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
                         "print(m.applied(), len(calls))"}


def _probe(kind, **env_changes) -> str:
    env = {k: v for k, v in os.environ.items()
           if k not in ("WAGEUBN_SIM_MALLOC", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")}
    env.update(env_changes)
    done = subprocess.run([sys.executable, "-c", PROBES[kind]], env=env, capture_output=True, text=True,
                          timeout=120, check=True)
    return done.stdout.strip().splitlines()[-1]


def test_importing_the_package_changes_no_malloc_setting():
    assert _probe("import") == "True False"


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the policy is glibc's mallopt")
def test_the_command_and_one_api_call_apply_the_policy_unless_told_otherwise():
    assert _probe("cli") == "True 2"
    assert _probe("api") == "True 2"
    assert _probe("api", WAGEUBN_SIM_MALLOC="system") == "False 0"
    assert _probe("api", MALLOC_TRIM_THRESHOLD_="131072") == "False 0"  # the user's own setting wins
    assert _probe("api", MALLOC_MMAP_THRESHOLD_="131072") == "False 0"
