"""Made once with wageubn-sim 0.1.0 at commit 478c496 (manifest and graph version 1)."""
import sys
from pathlib import Path
import numpy as np, torch, torch.nn as nn
import wageubn_sim
from wageubn_sim.vectors import write_bundle
out = Path(sys.argv[1])
torch.manual_seed(0)
net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(), nn.MaxPool2d(2),
                    nn.Flatten(), nn.Linear(8, 3))
m = wageubn_sim.quantize_model(net).train()
with torch.no_grad():
    m.double()(torch.randn(8, 1, 4, 4, dtype=torch.float64))
m.eval()
x = np.random.default_rng(0).standard_normal((2, 1, 4, 4))
g = wageubn_sim.compile(m, x)
g.save(out / "graph")
write_bundle(g, x, out / "bundle", command="tests/data/v1 (wageubn-sim 0.1.0, commit 478c496)")
np.save(out / "x.npy", x)
