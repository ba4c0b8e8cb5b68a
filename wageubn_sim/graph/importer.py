"""From a model of the torch path's modules to an integer graph (torch.fx).

Every weight, bias and BatchNorm constant is converted by the torch path's own quantizers
(so the graph holds exactly the integers the torch path uses); every register format comes
from the module's seed-style widths. Residual adds written as ``a + b`` or ``out += x``
become exact Add nodes.
"""
from __future__ import annotations

import contextlib
import copy
import io
import operator
import sys

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as TF
from torch.fx.passes.shape_prop import ShapeProp

from .. import function as wnn
from ..engine.ops.activation import ActivationParams
from ..engine.ops.add import AddParams
from ..engine.ops.batchnorm import BatchNormParams
from ..engine.ops.conv2d import Conv2dParams
from ..engine.ops.pool import PoolParams
from ..engine.registers import Accumulator
from ..fixedpoint.format import Format
from ..function._layer import QuantModule
from .ir import Graph, GraphInput, Node, unique_name
from ..engine.ops.flatten import FlattenParams

DEFAULT_INPUT_FORMAT = Format(16, 8)

SUPPORTED = ("wageubn_sim.function: Conv2d, Linear, Adder2d, BatchNorm2d, ReLU, ReLU6, AvgPool2d, "
             "AdaptiveAvgPool2d, Add; torch: MaxPool2d, Flatten, Identity, Dropout; "
             "functions: +, torch.add, torch.flatten, relu, view/reshape/flatten to (N, -1)")


class UnsupportedLayer(ValueError):
    """The model holds something the integer engine cannot run."""


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m, qualname):
        return isinstance(m, QuantModule) or super().is_leaf_module(m, qualname)


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _ints(t: torch.Tensor, frac: int) -> np.ndarray:
    """Grid values of the torch path to their integers (exact: checked)."""
    scaled = t.detach().double().cpu().numpy() * 2.0 ** frac
    if not np.all(np.isfinite(scaled)):
        raise ValueError("NaN or Inf in the model's parameters; fix or retrain the model first")
    q = np.round(scaled)
    if not np.array_equal(q, scaled):
        raise AssertionError("a quantized parameter is off its grid")  # a bug, not bad input
    return q.astype(np.int64)


def _seed_fmt(m, role):
    return Format.from_seed(getattr(m, f"{role}_dec_bit_width"), getattr(m, f"{role}_all_bit_width"))


def _io_fmt(m, role):
    return _seed_fmt(m, role) if m.iostrict else None


def _check_finite(module, path):
    for name, t in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ValueError(f"layer '{path}': {name} holds NaN or Inf; fix the model before compiling")


def _weight_layer(m, path, accumulator):
    if getattr(m, "padding_mode", "zeros") != "zeros":
        raise UnsupportedLayer(f"layer '{path}': padding_mode={m.padding_mode!r}; the engine pads with zeros")
    padding = getattr(m, "padding", 0)
    if isinstance(padding, str):
        raise UnsupportedLayer(f"layer '{path}': padding={padding!r}; give the padding as numbers")
    w_fmt = _seed_fmt(m, "weight")
    arrays = {"weight": _ints(m.quantized_weight(), w_fmt.frac_bits)}
    b_fmt = None
    if m.bias is not None:
        b_fmt = _seed_fmt(m, "bias")
        arrays["bias"] = _ints(m.quantized_bias(), b_fmt.frac_bits)
    is_linear = isinstance(m, nn.Linear)
    params = Conv2dParams(
        weight_fmt=w_fmt, bias_fmt=b_fmt,
        stride=(1, 1) if is_linear else _pair(m.stride),
        padding=(0, 0) if is_linear else _pair(padding),
        dilation=(1, 1) if is_linear else _pair(m.dilation),
        groups=1 if is_linear else m.groups,
        input_register=_io_fmt(m, "input"), accumulator=accumulator,
        out_fmt=_io_fmt(m, "output"))
    op = "linear" if is_linear else ("adder2d" if isinstance(m, wnn.Adder2d) else "conv2d")
    return op, params, arrays


def _batchnorm(m, path):
    if m.training:
        raise UnsupportedLayer(f"layer '{path}': BatchNorm2d in training mode; call model.eval()")
    if m.running_mean is None:
        raise UnsupportedLayer(f"layer '{path}': BatchNorm2d without running statistics "
                               "(track_running_stats=False) has no inference constants")
    with torch.no_grad():
        mean_q, std_q = m.statistics_registers(m.running_mean.double(), m.running_var.double())
        mean_fmt = _seed_fmt(m, "mean")
        std_fmt = Format(None, m.var_dec_bit_width - 1)
        arrays = {"mean": _ints(mean_q, mean_fmt.frac_bits), "std": _ints(std_q, std_fmt.frac_bits)}
        gamma_fmt = beta_fmt = None
        if m.affine:
            gamma_fmt = _seed_fmt(m, "weight")
            arrays["gamma"] = _ints(m._register(m.weight, "weight"), gamma_fmt.frac_bits)
            if m.bias is not None:
                beta_fmt = _seed_fmt(m, "bias")
                arrays["beta"] = _ints(m._register(m.bias, "bias"), beta_fmt.frac_bits)
    xhat = _seed_fmt(m, "xhat") if m.iostrict else Format(None, m.xhat_dec_bit_width - 1)
    params = BatchNormParams(mean_fmt, std_fmt, xhat, gamma_fmt, beta_fmt,
                             _io_fmt(m, "input"), _io_fmt(m, "output"))
    return "batchnorm2d", params, arrays


def _activation(m, ceiling=None):
    out = _seed_fmt(m, "acti") if m.iostrict else Format(None, m.acti_dec_bit_width - 1)
    return ActivationParams(out, ceiling, _io_fmt(m, "input"))


def _pool_out(m):
    return _seed_fmt(m, "output") if m.iostrict else Format(None, m.output_dec_bit_width - 1)


def _shape(node):
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None else None


def _module_node(m, path, fx_node, accumulator_for):
    if isinstance(m, (wnn.Conv2d, wnn.Linear, wnn.Adder2d)):
        return _weight_layer(m, path, accumulator_for(path))
    if isinstance(m, wnn.BatchNorm2d):
        return _batchnorm(m, path)
    if isinstance(m, wnn.ReLU6):
        return "activation", _activation(m, 6), {}
    if isinstance(m, wnn.ReLU):
        return "activation", _activation(m), {}
    if isinstance(m, nn.MaxPool2d):
        if m.ceil_mode or m.return_indices:
            raise UnsupportedLayer(f"layer '{path}': MaxPool2d with ceil_mode/return_indices")
        return "max_pool2d", PoolParams(_pair(m.kernel_size), _pair(m.stride or m.kernel_size),
                                        _pair(m.padding), _pair(m.dilation)), {}
    if isinstance(m, wnn.AvgPool2d):
        if m.ceil_mode:
            raise UnsupportedLayer(f"layer '{path}': AvgPool2d with ceil_mode=True")
        return "avg_pool2d", PoolParams(_pair(m.kernel_size), _pair(m.stride or m.kernel_size),
                                        _pair(m.padding), out_fmt=_pool_out(m),
                                        count_include_pad=m.count_include_pad,
                                        divisor_override=m.divisor_override), {}
    if isinstance(m, wnn.AdaptiveAvgPool2d):
        h, w = _shape(fx_node.args[0])[2:]
        oh, ow = _pair(m.output_size)
        oh, ow = oh or h, ow or w
        if h % oh or w % ow:
            raise UnsupportedLayer(f"layer '{path}': AdaptiveAvgPool2d from {h}x{w} to {oh}x{ow} "
                                   "has uneven windows; only sizes that divide the input are supported")
        k = (h // oh, w // ow)
        return "avg_pool2d", PoolParams(k, k, out_fmt=_pool_out(m)), {}
    if isinstance(m, wnn.Add):
        return "add", AddParams(_io_fmt(m, "output")), {}
    if isinstance(m, nn.Flatten):
        if m.start_dim != 1 or m.end_dim != -1:
            raise UnsupportedLayer(f"layer '{path}': Flatten({m.start_dim}, {m.end_dim}); only (1, -1)")
        return "flatten", FlattenParams(), {}
    hint = ("; it is a float layer: convert the model with wageubn_sim.quantize_model first"
            if type(m).__module__.startswith("torch.nn") else "")
    raise UnsupportedLayer(f"layer '{path}' of type {type(m).__module__}.{type(m).__name__} is not "
                           f"supported{hint}. Supported: {SUPPORTED}")


_ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)
_RELU_FUNCTIONS = (torch.relu, TF.relu)
_ALIAS_MODULES = (nn.Identity, nn.Dropout)


def compile_model(model: nn.Module, example_input, input_format: Format = DEFAULT_INPUT_FORMAT,
                  accumulators=None) -> Graph:
    """The integer graph of ``model`` (its torch-path modules), traced on ``example_input``.

    ``input_format``: the network input's format (float inputs are quantized to it, half to
    even, saturating). ``accumulators``: one `Accumulator` for every MAC layer, or a dict from
    layer name (the module path, e.g. "layer1.0.conv1") to Accumulator, where the key "*"
    stands for every other MAC layer; default: exact. Layers are named as `layer_names` says.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"compile takes a torch.nn.Module, got {type(model).__name__}")
    model = copy.deepcopy(model).double().eval()
    for path, module in model.named_modules():
        _check_finite(module, path or "<model>")
    accumulator_for = _accumulator_lookup(model, accumulators)
    try:
        fx_graph = _Tracer().trace(model)
    except Exception as err:  # torch.fx raises many kinds on untraceable code
        raise UnsupportedLayer(f"the model cannot be traced by torch.fx: {err}") from err
    gm = fx.GraphModule(model, fx_graph)
    example = torch.as_tensor(np.asarray(example_input, dtype=np.float64))
    graph_input = GraphInput("input", tuple(example.shape[1:]), input_format)
    x_q = graph_input.quantize(example.numpy())
    # ShapeProp prints a traceback of its own before raising (the error below says what
    # failed), so its stderr is held back, and passed on only when it succeeds (warnings)
    held = io.StringIO()
    try:
        with torch.no_grad(), contextlib.redirect_stderr(held):
            ShapeProp(gm).propagate(torch.from_numpy(x_q * 2.0 ** -input_format.frac_bits))
        sys.stderr.write(held.getvalue())
    except RuntimeError as err:
        cause = err.__cause__ or err
        raise ValueError(f"the example input of shape {tuple(example.shape)} does not fit the "
                         f"model: {str(cause).splitlines()[0]}") from None

    nodes, alias, outputs = [], {}, []
    placeholders = 0
    names = layer_names(gm.graph)
    for n in gm.graph.nodes:
        def src(a):
            return alias.get(a.name, a.name)
        if n.op == "placeholder":
            placeholders += 1
            if placeholders > 1:
                raise UnsupportedLayer("the model takes more than one input")
            alias[n.name] = "input"
        elif n.op == "output":
            outputs = [src(a) for a in (n.args[0] if isinstance(n.args[0], (tuple, list)) else [n.args[0]])]
        elif n.op == "call_module":
            m = gm.get_submodule(n.target)
            if isinstance(m, _ALIAS_MODULES):
                alias[n.name] = src(n.args[0])
                continue
            op, params, arrays = _module_node(m, n.target, n, accumulator_for)
            ins = [src(a) for a in n.args if isinstance(a, fx.Node)]
            nodes.append(Node(names[n.name], op, ins, params, arrays, n.target))
            alias[n.name] = names[n.name]
        elif n.op in ("call_function", "call_method"):
            nodes_or_alias = _function_node(n, names[n.name], src)
            if isinstance(nodes_or_alias, str):
                alias[n.name] = nodes_or_alias
            elif nodes_or_alias is not None:
                nodes.append(nodes_or_alias)
                alias[n.name] = nodes_or_alias.name
        else:
            raise UnsupportedLayer(f"graph node {n.name} ({n.op} {n.target}) is not supported")
    graph = Graph([graph_input], nodes, outputs, {"input_shape": list(example.shape)})
    traced = graph.run(x_q, trace=True)
    for node in graph.nodes:  # record the static formats and shapes
        out = traced.layers[node.name]
        node.out_fmt, node.out_shape = out.fmt, tuple(out.q.shape[1:])
    return graph


def layer_names(fx_graph) -> dict:
    """fx node name -> the layer's one name, used by the graph, its bundles, audits, compare
    and ``accumulators=``: the torch module path for a module's node (a module called again
    gets -2, -3, ...: module paths hold no '-'), fx's own name for a function's node."""
    names, used = {}, {"input"}
    for n in fx_graph.nodes:
        if n.op not in ("call_module", "call_function", "call_method"):
            continue
        names[n.name] = unique_name(n.target if n.op == "call_module" else n.name, used)
    return names


def _function_source(target) -> str:
    """A function's name as a node's source: ``torch.flatten``, ``operator.add``, or a method's
    name (the repr of a builtin holds its address, which differs from run to run)."""
    if isinstance(target, str):
        return target
    module = {"_operator": "operator"}.get(getattr(target, "__module__", None), getattr(target, "__module__", None))
    name = getattr(target, "__name__", None)
    return f"{module}.{name}" if module and name else repr(target)


def _function_node(n, name, src):
    target = n.target
    tensor_args = [a for a in n.args if isinstance(a, fx.Node)]
    if n.op == "call_function" and target in _ADD_FUNCTIONS and len(tensor_args) == 2 and not n.kwargs:
        return Node(name, "add", [src(a) for a in tensor_args], AddParams(), {}, _function_source(target))
    if (n.op == "call_function" and target in _RELU_FUNCTIONS) or (n.op == "call_method" and target == "relu"):
        return Node(name, "activation", [src(tensor_args[0])], ActivationParams(None), {}, "relu")
    if n.op == "call_method" and target == "size":
        return None  # feeds a view's shape only
    flatten = ((n.op == "call_function" and target is torch.flatten) or
               (n.op == "call_method" and target in ("view", "reshape", "flatten")))
    if flatten:
        shape_in, shape_out = _shape(n.args[0]), _shape(n)
        if shape_out is None or len(shape_out) != 2 or shape_out[0] != shape_in[0]:
            raise UnsupportedLayer(f"{n.name}: {target} to shape {shape_out}; only (N, -1) is supported")
        return Node(name, "flatten", [src(n.args[0])], FlattenParams(), {}, _function_source(target))
    if n.op == "call_method" and target in ("contiguous", "clone", "detach"):
        return src(n.args[0])
    raise UnsupportedLayer(f"operation {n.name} ({getattr(target, '__name__', target)}) is not "
                           f"supported. Supported: {SUPPORTED}")


def _accumulator_lookup(model, accumulators):
    if accumulators is None:
        return lambda path: Accumulator()
    if isinstance(accumulators, Accumulator):
        return lambda path: accumulators
    if not isinstance(accumulators, dict):
        raise TypeError("accumulators must be an Accumulator or a dict {layer name: Accumulator}")
    names = dict(model.named_modules())
    unknown = [k for k in accumulators if k not in names and k != "*"]
    if unknown:
        macs = [n for n, m in names.items() if isinstance(m, (wnn.Conv2d, wnn.Linear, wnn.Adder2d))]
        raise ValueError(f"accumulators name layers the model does not have: {unknown}; its MAC "
                         f"layers are {macs[:8]}{' ...' if len(macs) > 8 else ''}")
    default = accumulators.get("*", Accumulator())
    return lambda path: accumulators.get(path, default)
