"""BatchNorm folded into the conv before it (docs/arithmetic.md §9): the folded registers and
datapath against a Python-int reference, which pairs fold, files, errors and the CLI."""
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn as nn
from click.testing import CliRunner
from hypothesis import given, settings, strategies as st
from int_reference import int_conv2d

import wageubn_sim
from wageubn_sim.cli import main
from wageubn_sim.config import Config
from wageubn_sim.engine.ops.conv2d_bn import Conv2dBatchNormParams, conv2d_bn
from wageubn_sim.fixedpoint import Rounding, reference as ref


class Net(nn.Module):
    def __init__(self, affine):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4, affine=affine)
        self.conv2 = nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=2, bias=True)
        self.bn2 = nn.BatchNorm2d(4)
        self.conv3 = nn.Conv2d(4, 4, 1)  # read twice: cannot fold
        self.bn3 = nn.BatchNorm2d(4)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        y = self.conv3(x)
        return self.bn3(y) + y


def _graph(seed, affine=True, config=None):
    torch.manual_seed(seed)
    model = wageubn_sim.quantize_model(Net(affine), config)
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model.double()(torch.randn(6, 2, 8, 8, dtype=torch.float64) * 2)
    model.eval()
    x = np.random.default_rng(seed).standard_normal((3, 2, 8, 8)) * 2
    return model, wageubn_sim.compile(model, x[:1]), x


def _reference_node(original, node, x, x_frac, bits):
    """The folded node's output from the unfolded graph's registers, in Python ints."""
    by_name = {n.name: n for n in original.nodes}
    bn = by_name[node.name]
    conv = by_name[bn.inputs[0]]
    bp, cp = bn.params, conv.params
    acc = int_conv2d(x, conv.arrays["weight"], cp.stride[0], cp.padding[0], cp.dilation[0], cp.groups)
    f_acc = x_frac + cp.weight_fmt.frac_bits
    if "bias" in conv.arrays:
        to = max(f_acc, cp.bias_fmt.frac_bits)
        acc = (acc << (to - f_acc)) + (conv.arrays["bias"] << (to - cp.bias_fmt.frac_bits))[None, :, None, None]
        f_acc = to
    assert node.params.accumulator_frac == f_acc
    fm = node.params.multiplier_frac
    limit = 2 ** (bits - 1) - 1
    real = [Fraction(int(bn.arrays["gamma"][c]) if bp.gamma_fmt else 1,
                     2 ** (bp.gamma_fmt.frac_bits if bp.gamma_fmt else 0))
            / Fraction(int(bn.arrays["std"][c]), 2 ** bp.std_fmt.frac_bits) for c in range(len(bn.arrays["std"]))]
    m = [ref.round_fraction(r * Fraction(2) ** fm, Rounding.HALF_EVEN) for r in real]
    # the finest grid that holds every multiplier in BITS signed bits
    assert max(abs(v) for v in m) <= limit
    assert max(abs(ref.round_fraction(r * Fraction(2) ** (fm + 1), Rounding.HALF_EVEN)) for r in real) > limit
    assert node.arrays["multiplier"].tolist() == m
    beta = [Fraction(int(b), 2 ** bp.beta_fmt.frac_bits) if bp.beta_fmt else Fraction(0)
            for b in bn.arrays.get("beta", np.zeros(len(m), np.int64))]
    mean = [Fraction(int(v), 2 ** bp.mean_fmt.frac_bits) for v in bn.arrays["mean"]]
    two = Fraction(2)  # the multipliers' grid may be coarser than 1 (fm < 0)
    o = [ref.round_fraction((beta[c] - m[c] * two ** -fm * mean[c]) * two ** (f_acc + fm),
                            Rounding.HALF_EVEN) for c in range(len(m))]
    assert node.arrays["offset"].tolist() == o
    out_fmt = node.out_fmt
    want = np.empty(acc.shape, np.int64)
    for idx, a in np.ndenumerate(acc):
        s = int(a) * m[idx[1]] + o[idx[1]]
        y = ref.round_fraction(s * Fraction(2) ** (out_fmt.frac_bits - f_acc - fm), bp.rounding)
        want[idx] = ref.overflow_int(y, out_fmt, bp.overflow)
    return want


@settings(deadline=None, max_examples=15)
@given(seed=st.integers(0, 2**16), bits=st.sampled_from([2, 5, 8, 16, 24]), affine=st.booleans())
def test_folded_nodes_equal_the_python_int_reference(seed, bits, affine):
    model, graph, x = _graph(seed, affine)
    folded = wageubn_sim.fold_batchnorm(graph, bits)
    ops = {n.name: n.op for n in folded.nodes}
    assert ops["bn1"] == ops["bn2"] == "conv2d_bn"
    assert ops["conv3"] == "conv2d" and ops["bn3"] == "batchnorm2d"  # conv3 has two readers
    assert "conv1" not in ops and "conv2" not in ops
    assert [n.op for n in graph.nodes].count("conv2d_bn") == 0  # the input graph is unchanged
    run = folded.run(x, trace=True)
    frac_in = {"input": folded.inputs[0].fmt.frac_bits}
    values = {"input": folded.quantize_input(x)}
    for node in folded.nodes:
        values[node.name], frac_in[node.name] = run.layers[node.name].q, run.layers[node.name].fmt.frac_bits
    for name in ("bn1", "bn2"):
        node = next(n for n in folded.nodes if n.name == name)
        src = node.inputs[0]
        want = _reference_node(graph, node, values[src], frac_in[src], bits)
        assert np.array_equal(run.layers[name].q, want)
        assert run.layers[name].fmt == graph.nodes[[n.name for n in graph.nodes].index(name)].out_fmt


def test_large_ratios_fold_onto_a_grid_coarser_than_one():
    """gamma/std of 1000 in 4 signed bits: the multiplier 4 on the grid 2**8 (f_m = -8), the
    offset exact on 2**-(F + f_m); found when `--fold-bn 12` of the demo raised a TypeError
    (2 ** -8 of an int is a float, which Fraction refused)."""
    from wageubn_sim.graph.fold import folded_registers
    beta, mean = [Fraction(3, 4)], [Fraction(-5, 8)]
    mult, offset, frac = folded_registers([Fraction(1000)], beta, mean, 10, 4)
    assert frac == -8 and mult.tolist() == [4]  # 1000 / 256 = 3.9 -> 4 <= 7; 1000 / 128 -> 8 > 7
    want = ref.round_fraction((beta[0] - 4 * 256 * mean[0]) * Fraction(2) ** (10 - 8), Rounding.HALF_EVEN)
    assert offset.tolist() == [want] == [2563]
    with pytest.raises(TypeError, match="exact rational"):
        ref.round_fraction(0.5, Rounding.HALF_EVEN)  # a float would have been rounded already


def test_folded_graph_saves_loads_and_compares(tmp_path):
    model, graph, x = _graph(3)
    folded = wageubn_sim.fold_batchnorm(graph, 12)
    path = folded.save(tmp_path / "folded")
    again = wageubn_sim.load_graph(path)
    assert np.array_equal(again.run(x).q, folded.run(x).q)
    assert again.meta["folded_batchnorm"] == {"multiplier_bits": 12}
    assert wageubn_sim.compare(model, x, graph=graph).exact
    report = wageubn_sim.compare(model, x, graph=folded)
    assert [l.name for l in report.layers] == [n.name for n in folded.nodes]
    assert not report.exact  # folding drops the xhat rounding: values move, the report says why
    assert report.first.layer == "bn1" and "folded" in report.first.cause


def test_iostrict_pairs_do_not_fold():
    _, graph, _ = _graph(1, config=Config(iostrict=True))
    assert "conv2d_bn" not in [n.op for n in wageubn_sim.fold_batchnorm(graph).nodes]


def test_fold_errors_name_the_fix():
    _, graph, x = _graph(2)
    with pytest.raises(ValueError, match="multiplier_bits=40"):
        wageubn_sim.fold_batchnorm(graph, 40)
    node = next(n for n in wageubn_sim.fold_batchnorm(graph).nodes if n.op == "conv2d_bn")
    p = Conv2dBatchNormParams(**{**node.params.__dict__, "accumulator_frac": 99})
    xq = np.zeros((1, 2, 8, 8), np.int64)
    with pytest.raises(ValueError, match="refold"):
        conv2d_bn(xq, 8, node.arrays["weight"], None, node.arrays["multiplier"], node.arrays["offset"], p)
    with pytest.raises(ValueError, match="one entry per output channel"):
        conv2d_bn(xq, 8, node.arrays["weight"], None, node.arrays["multiplier"][:1], node.arrays["offset"], p)
    huge = np.full(4, 2**40, np.int64)
    with pytest.raises(OverflowError, match="fewer multiplier bits"):
        conv2d_bn(np.full((1, 2, 8, 8), 2**15), 8, node.arrays["weight"], None, huge, huge, node.params)


def test_cli_compile_fold_bn_then_vectors_verify(tmp_path):
    def run(*args):
        return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    g = tmp_path / "g"
    r = run("compile", "wageubn_sim.demo:demo_model", "--random", 1, "--shape", "1,8,8",
            "--fold-bn", 10, "-o", g)
    assert r.exit_code == 0, r.output
    assert '"conv2d_bn"' in (g / "graph.json").read_text()
    assert run("vectors", g, "--random", 2, "-o", tmp_path / "v").exit_code == 0
    assert run("verify", tmp_path / "v").exit_code == 0
    assert run("audit", g, "--random", 2, "-o", tmp_path / "a").exit_code == 0
    r = run("compile", "wageubn_sim.demo:demo_model", "--random", 1, "--shape", "1,8,8",
            "--fold-bn", 1, "-o", tmp_path / "g2")
    assert r.exit_code == 2 and not (tmp_path / "g2").exists()
