"""100 consecutive integer training steps equal the torch path's (float64), bit for bit."""
import numpy as np
import pytest
import torch
import torch.nn as nn

import wageubn_sim
from wageubn_sim.function.optim import WageubnSGD
from wageubn_sim.training import UpdateParams
from wageubn_sim.training.step import IntegerTrainer, cross_entropy_error


class ResidualNet(nn.Module):
    """BatchNorm-free: conv, ReLU, a residual block, max pooling, a dense layer."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.relu0 = nn.ReLU()
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.relu1 = nn.ReLU6()
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(4 * 4 * 4, 10)

    def forward(self, x):
        x = self.relu0(self.stem(x))
        y = self.conv2(self.relu1(self.conv1(x)))
        x = self.pool(self.relu2(x + y))
        return self.fc(torch.flatten(x, 1))


def _train_both(model, opt, trainer, batches):
    """One step of each path per batch; after each, outputs, weights and momenta must agree."""
    params = dict(model.named_parameters())
    names = {"weight": "weight", "bias": "bias", "gamma": "weight", "beta": "bias"}
    sources = {n.name: n.source for n in trainer.graph.nodes}
    for step, (x, y) in enumerate(batches):
        logits = trainer.step(x, y)
        xq = trainer.graph.quantize_input(x) * 2.0 ** -trainer.graph.inputs[0].fmt.frac_bits
        out = model(torch.from_numpy(xq))
        assert np.array_equal(out.detach().numpy(), logits.to_float()), f"outputs, step {step}"
        out.backward(torch.from_numpy(cross_entropy_error(logits, y).to_float()))
        opt.step()
        opt.zero_grad()
        for (layer, role), master in trainer.master.items():
            p = params[f"{sources[layer]}.{names[role]}"]
            assert np.array_equal(p.detach().numpy(), master.to_float()), (step, layer, role)
            assert np.array_equal(opt.state[p]["momentum"].numpy(),
                                  trainer.momentum[(layer, role)].to_float()), (step, layer, role)
    assert trainer.step_number == len(batches)


def _both_paths(model, data_shape, steps, seed=0, update=UpdateParams()):
    """The torch path's optimizer (parameters snapped to the master grid), the integer trainer
    of the same model, and ``steps`` batches cycling through seeded random data."""
    opt = WageubnSGD(model.parameters(), lr=0.05, update=update)
    opt.snap_to_grid()
    rng = np.random.default_rng(seed)
    data = rng.standard_normal(data_shape)
    labels = rng.integers(0, 10, data_shape[:2])
    trainer = IntegerTrainer.from_model(model, data[0], lr=0.05, update=update)
    return opt, trainer, [(data[s % len(data)], labels[s % len(data)]) for s in range(steps)]


@pytest.mark.parametrize("order", ["quantize_after", "quantize_before"])
def test_integer_training_equals_torch_path_for_100_steps(order):
    torch.manual_seed(0)
    model = wageubn_sim.quantize_model(ResidualNet()).double()
    opt, trainer, batches = _both_paths(model, (8, 16, 1, 8, 8), 100,
                                        update=UpdateParams(order=order))
    _train_both(model, opt, trainer, batches)


def test_weight_decay_before_g_trains_bit_exactly():
    """Weight decay 2**-6 * w added to every conv/linear weight gradient before G, in both
    paths; set through Config, as the seed's API sets every other layer setting."""
    from wageubn_sim.config import Config, config_network
    torch.manual_seed(0)
    model = wageubn_sim.quantize_model(ResidualNet()).double()
    config_network(model, "m", Config(weight_decay_shift=6))
    assert model.stem.weight_decay_shift == 6 and model.fc.weight_decay_shift == 6
    opt, trainer, batches = _both_paths(model, (4, 16, 1, 8, 8), 30)
    assert trainer.layers["stem"]["decay_shift"] == 6
    _train_both(model, opt, trainer, batches)
    # the decay is there: without it, the same steps end elsewhere
    torch.manual_seed(0)
    _, other, _ = _both_paths(wageubn_sim.quantize_model(ResidualNet()).double(), (4, 16, 1, 8, 8), 30)
    for x, y in batches:
        other.step(x, y)
    assert not np.array_equal(other.master[("stem", "weight")].q, trainer.master[("stem", "weight")].q)


def test_unsupported_layers_are_named():
    model = wageubn_sim.quantize_model(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))).eval()
    folded = wageubn_sim.fold_batchnorm(wageubn_sim.compile(model, np.zeros((1, 1, 5, 5))))
    with pytest.raises(ValueError, match="does not support 1 \\(conv2d_bn\\)"):
        IntegerTrainer(folded, {}, lr=0.05)


def test_adder_network_trains_bit_exactly_for_30_steps(tmp_path):
    """Adder2d (AdderNet's gradients) with BatchNorm behind it, as AdderNets use it; one
    behind a conv, so that its input error is used too."""
    from wageubn_sim import function as F
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(),
                        F.Adder2d(3, 4, 3, padding=1, bias=True), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 4, 10))
    model = wageubn_sim.quantize_model(net).double().train()
    opt, trainer, batches = _both_paths(model, (4, 8, 1, 8, 8), 30, seed=1)
    assert [n.op for n in trainer.graph.nodes][2] == "adder2d"
    _train_both(model, opt, trainer, batches)
    from wageubn_sim.vectors import verify_bundle
    from wageubn_sim.vectors.training import write_training_bundle
    root = write_training_bundle(trainer, *batches[0], tmp_path / "t", kinds=("npy",))
    verify_bundle(root)  # G and U recomputed from the adder layer's files too
    assert (root / "2" / "weight_grad.npy").is_file()


def test_demo_model_trains_bit_exactly_for_100_steps():
    """BatchNorm (batch statistics, integer backward), global average pooling, residual adds."""
    from wageubn_sim.demo import DEMO_DATA, demo_model, images_to_input
    torch.manual_seed(0)
    model = wageubn_sim.quantize_model(demo_model()).double().train()
    opt = WageubnSGD(model.parameters(), lr=0.05)
    opt.snap_to_grid()
    with np.load(DEMO_DATA) as data:
        x_all, y_all = images_to_input(data["test_images"]), data["test_labels"]
    trainer = IntegerTrainer.from_model(model, x_all[:16], lr=0.05)
    batches = [(x_all[16 * (s % 20):16 * (s % 20) + 16], y_all[16 * (s % 20):16 * (s % 20) + 16])
               for s in range(100)]
    _train_both(model, opt, trainer, batches)
