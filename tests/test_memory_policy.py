"""The freed-memory policy (`wageubn_sim.memory`): applied at import on glibc, and left alone
when the user asks or set glibc's own variables."""
import os
import platform
import subprocess
import sys

import pytest

PROBE = "import wageubn_sim, wageubn_sim.memory as m; print(m.KEEPS_FREED_MEMORY)"


def _probe(**env_changes) -> str:
    env = {k: v for k, v in os.environ.items()
           if k not in ("WAGEUBN_SIM_MALLOC", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")}
    env.update(env_changes)
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                          timeout=120, check=True)
    return done.stdout.strip()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the policy is glibc's mallopt")
def test_the_policy_applies_unless_told_otherwise():
    assert _probe() == "True"
    assert _probe(WAGEUBN_SIM_MALLOC="system") == "False"
    assert _probe(MALLOC_TRIM_THRESHOLD_="131072") == "False"  # the user's own setting wins
    assert _probe(MALLOC_MMAP_THRESHOLD_="131072") == "False"
