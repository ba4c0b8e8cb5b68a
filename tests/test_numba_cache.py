"""The disk cache of the JIT holds the narrow-accumulator MAC kernel: a second process loads it
instead of compiling it again (it used to miss every time, since the kernel took functions as
arguments, and wrote a new cache file on each run)."""
import json
import os
import subprocess
import sys

SCRIPT = """
import json
import numpy as np
from wageubn_sim.engine.mac import narrow
from wageubn_sim.engine.ops.conv2d import Conv2dParams, conv2d
from wageubn_sim.engine.registers import Accumulator
from wageubn_sim.fixedpoint import Format
rng = np.random.default_rng(0)
x = rng.integers(-128, 128, (1, 4, 6, 6))
w = rng.integers(-127, 128, (4, 4, 3, 3))
conv2d(x, 0, w, None, Conv2dParams(Format(8, 0), padding=(1, 1), accumulator=Accumulator(12, "SAT")))
print(json.dumps({f.__name__: [sum(f.stats.cache_hits.values()), sum(f.stats.cache_misses.values())]
                  for f in (narrow.narrow_mac_loop, narrow._narrow_mac_loop)}))
"""


def test_a_second_process_loads_the_narrow_kernel_from_the_cache(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    runs = [json.loads(subprocess.run([sys.executable, "-c", SCRIPT], env=env, check=True,
                                      capture_output=True, text=True).stdout.splitlines()[-1])
            for _ in range(2)]
    assert runs[0]["_narrow_mac_loop"][1] >= 1  # compiled, the first time
    assert runs[1]["narrow_mac_loop"][0] >= 1  # loaded from the cache the second time
    assert runs[1]["_narrow_mac_loop"] == [0, 0]  # with the kernel inside: nothing compiled
    files = [p.name for p in (tmp_path / "cache").rglob("*narrow_mac_loop*")]
    subprocess.run([sys.executable, "-c", SCRIPT], env=env, check=True, capture_output=True)
    assert sorted(p.name for p in (tmp_path / "cache").rglob("*narrow_mac_loop*")) == sorted(files)
