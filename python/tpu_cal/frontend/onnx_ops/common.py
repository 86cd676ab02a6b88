"""Converters shared by every model family: elementwise math, activations, shapes and data movement."""
from __future__ import annotations

import numpy as np

from ..onnx_import import _ONNX_TO_NP, converter

# ONNX op -> (top op, attribute builder)
_UNARY = {
    "Relu": ("relu", None), "Sigmoid": ("sigmoid", None), "Tanh": ("tanh", None), "Erf": ("erf", None),
    "Exp": ("exp", None), "Log": ("log", None), "Sqrt": ("sqrt", None), "Abs": ("abs", None), "Neg": ("neg", None),
    "Reciprocal": ("reciprocal", None), "Floor": ("floor", None), "Not": ("not", None), "IsNaN": ("isnan", None),
    "Softplus": ("softplus", None), "Mish": ("mish", None), "HardSwish": ("hardswish", None),
    "LeakyRelu": ("leaky_relu", lambda imp: {"alpha": float(imp.attr("alpha", 0.01))}),
    "HardSigmoid": ("hardsigmoid", lambda imp: {"alpha": float(imp.attr("alpha", 0.2)),
                                                 "beta": float(imp.attr("beta", 0.5))}),
    "Gelu": ("gelu", lambda imp: {"approximate": imp.attr("approximate", b"none").decode()
                                  if isinstance(imp.attr("approximate", "none"), bytes)
                                  else imp.attr("approximate", "none")}),
}
_BINARY = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "Pow": "pow", "Equal": "equal",
           "Less": "less", "Greater": "greater", "And": "and", "Or": "or"}
_VARIADIC = {"Max": "max", "Min": "min", "Sum": "add"}


@converter(*_UNARY)
def unary(imp, node):
    op, attrs = _UNARY[node.op_type]
    return imp.emit(f"top.{op}", [imp.input(0)], attrs(imp) if attrs else {})


@converter(*_BINARY)
def binary(imp, node):
    a, b = imp.input(0), imp.input(1)
    if node.op_type == "Pow" and b.dtype != a.dtype:
        b = imp.const(b.data.astype(a.dtype), b.label) if b.const else b
    return imp.emit(f"top.{_BINARY[node.op_type]}", [a, b])


@converter("LessOrEqual", "GreaterOrEqual")
def compare_or_equal(imp, node):
    # a <= b is not(a > b): keeps the op set small and exact
    a, b = imp.input(0), imp.input(1)
    strict = imp.emit("top.greater" if node.op_type == "LessOrEqual" else "top.less", [a, b],
                      name=imp.out_name() + "_strict")
    return imp.emit("top.not", [strict])


@converter(*_VARIADIC, "Mean")
def variadic(imp, node):
    vals = [imp.input(i) for i in range(len(node.input))]
    op = "add" if node.op_type == "Mean" else _VARIADIC[node.op_type]
    acc = vals[0]
    for k, v in enumerate(vals[1:]):
        last = k == len(vals) - 2 and node.op_type != "Mean"
        acc = imp.emit(f"top.{op}", [acc, v], name=None if last else f"{imp.out_name()}_{k}")
    if node.op_type == "Mean":
        acc = imp.emit("top.mul", [acc, imp.const(np.array(1.0 / len(vals), acc.dtype))])
    return acc


@converter("Identity", "Dropout")
def identity(imp, node):
    return imp.input(0)   # Dropout's optional mask output is never consumed at inference


@converter("Constant")
def constant(imp, node):
    import onnx.numpy_helper as nh
    for a in node.attribute:
        if a.name == "value":
            return imp.const(nh.to_array(a.t), node.output[0])
        if a.name in ("value_float", "value_int"):
            return imp.const(np.array(a.f if a.name == "value_float" else a.i,
                                      np.float32 if a.name == "value_float" else np.int64), node.output[0])
        if a.name in ("value_floats", "value_ints"):
            return imp.const(np.array(list(a.floats) if a.name == "value_floats" else list(a.ints),
                                      np.float32 if a.name == "value_floats" else np.int64), node.output[0])
    imp.fail("Constant without a supported value attribute")


@converter("Shape")
def shape(imp, node):
    s = np.array(imp.input(0).shape, np.int64)
    start, end = imp.attr("start", 0), imp.attr("end", None)
    return imp.const(s[start:end])


@converter("Size")
def size(imp, node):
    return imp.const(np.array(int(np.prod(imp.input(0).shape)), np.int64))


@converter("ConstantOfShape")
def constant_of_shape(imp, node):
    import onnx.numpy_helper as nh
    shape = imp.const_input(0, "shape")
    t = imp.attr("value")
    value = nh.to_array(t).reshape(-1)[0] if t is not None else np.float32(0)
    return imp.const(np.full(tuple(int(d) for d in shape), value, dtype=np.asarray(value).dtype))


@converter("Range")
def range_(imp, node):
    start, limit, delta = (imp.const_input(i, n) for i, n in enumerate(("start", "limit", "delta")))
    return imp.const(np.arange(start, limit, delta).astype(np.asarray(start).dtype))


@converter("Cast")
def cast(imp, node):
    to = imp.attr("to")
    if to not in _ONNX_TO_NP:
        imp.fail(f"cast to unsupported ONNX type code {to}")
    x = imp.input(0)
    if x.dtype == np.dtype(_ONNX_TO_NP[to]):
        return x
    return imp.emit("top.cast", [x], dtype=_ONNX_TO_NP[to])


def reshape_to(imp, x, target, name=None):
    target = tuple(int(d) for d in target)
    if target == x.shape:
        return x
    return imp.emit("top.reshape", [x], shape=target, name=name)


@converter("Reshape")
def reshape(imp, node):
    x = imp.input(0)
    spec = [int(d) for d in imp.const_input(1, "shape")]
    allowzero = imp.attr("allowzero", 0)
    spec = [x.shape[i] if d == 0 and not allowzero else d for i, d in enumerate(spec)]
    try:
        target = np.zeros(x.shape, np.bool_).reshape(spec).shape
    except ValueError:
        imp.fail(f"cannot reshape {x.shape} to {spec}")
    return reshape_to(imp, x, target)


@converter("Flatten")
def flatten(imp, node):
    x = imp.input(0)
    axis = imp.attr("axis", 1) % max(len(x.shape), 1) if imp.attr("axis", 1) < 0 else imp.attr("axis", 1)
    return reshape_to(imp, x, (int(np.prod(x.shape[:axis])), int(np.prod(x.shape[axis:]))))


def _axes(imp, i):
    axes = imp.attr("axes")
    if axes is None and len(imp.node.input) > i:
        a = imp.const_input(i, "axes")
        axes = None if a is None else [int(v) for v in a]
    return axes


@converter("Squeeze")
def squeeze(imp, node):
    x = imp.input(0)
    axes = _axes(imp, 1)
    if axes is None:
        axes = [i for i, d in enumerate(x.shape) if d == 1]
    return reshape_to(imp, x, np.squeeze(np.zeros(x.shape, np.bool_), tuple(axes)).shape)


@converter("Unsqueeze")
def unsqueeze(imp, node):
    x = imp.input(0)
    return reshape_to(imp, x, np.expand_dims(np.zeros(x.shape, np.bool_), tuple(_axes(imp, 1))).shape)


@converter("Transpose")
def transpose(imp, node):
    x = imp.input(0)
    perm = imp.attr("perm") or list(range(len(x.shape)))[::-1]
    if list(perm) == list(range(len(x.shape))):
        return x
    return imp.emit("top.permute", [x], {"order": [int(p) for p in perm]})


@converter("Concat")
def concat(imp, node):
    from ...ops import VARIADIC_SLOTS
    xs = [imp.input(i) for i in range(len(node.input)) if imp.input(i) is not None]
    xs = [x for x in xs if int(np.prod(x.shape)) > 0 or len(xs) == 1]   # empty shape tensors contribute nothing
    axis = imp.attr("axis") % len(xs[0].shape)
    if len(xs) == 1:
        return xs[0]
    while len(xs) > VARIADIC_SLOTS:   # very wide concats become a tree of concats
        head = imp.emit("top.concat", xs[:VARIADIC_SLOTS], {"axis": axis}, name=f"{imp.out_name()}_part")
        xs = [head] + xs[VARIADIC_SLOTS:]
    return imp.emit("top.concat", xs, {"axis": axis})


@converter("Gather")
def gather(imp, node):
    x, idx = imp.input(0), imp.input(1)
    axis = imp.attr("axis", 0) % len(x.shape)
    return imp.emit("top.gather", [x, idx], {"axis": axis})


def slice_attrs(shape, starts, ends, axes, steps):
    """Static, normalized slice attributes (python slice semantics, ONNX clamping)."""
    out = {"starts": [], "ends": [], "steps": [], "axes": []}
    for s, e, a, st in zip(starts, ends, axes, steps):
        a = int(a) % len(shape)
        start, stop, step = slice(int(s), int(e), int(st)).indices(shape[a])
        if step < 0 and stop < 0:
            stop = -(2 ** 63)   # runs to the start of the axis; -1 would wrap in python slicing
        out["starts"].append(start)
        out["ends"].append(stop)
        out["steps"].append(step)
        out["axes"].append(a)
    return out


@converter("Slice")
def slice_(imp, node):
    x = imp.input(0)
    if imp.opset < 10:
        starts, ends = imp.attr("starts"), imp.attr("ends")
        axes = imp.attr("axes") or list(range(len(starts)))
        steps = [1] * len(starts)
    else:
        starts, ends = imp.const_input(1, "starts"), imp.const_input(2, "ends")
        axes = imp.const_input(3, "axes")
        axes = list(range(len(starts))) if axes is None else axes
        steps = imp.const_input(4, "steps")
        steps = [1] * len(starts) if steps is None else steps
    if any(int(s) == 0 for s in steps):
        imp.fail("slice step 0")
    attrs = slice_attrs(x.shape, starts, ends, axes, steps)
    return imp.emit("top.slice", [x], attrs)


@converter("Where")
def where(imp, node):
    return imp.emit("top.where", [imp.input(0), imp.input(1), imp.input(2)])


@converter("Expand")
def expand(imp, node):
    x = imp.input(0)
    target = np.broadcast_shapes(x.shape, tuple(int(d) for d in imp.const_input(1, "shape")))
    if target == x.shape:
        return x
    return imp.emit("top.expand", [x], shape=target)


@converter("Tile")
def tile(imp, node):
    reps = [int(r) for r in imp.const_input(1, "repeats")]
    return imp.emit("top.tile", [imp.input(0)], {"repeats": reps})


@converter("Softmax", "LogSoftmax")
def softmax(imp, node):
    x = imp.input(0)
    rank = len(x.shape)
    op = "top.softmax" if node.op_type == "Softmax" else "top.log_softmax"
    axis = imp.attr("axis", -1 if imp.opset >= 13 else 1) % rank
    if imp.opset >= 13 or axis == rank - 1:
        return imp.emit(op, [x], {"axis": axis})
    # before opset 13 the input is flattened to 2-D at `axis` and normalized over the second dimension
    flat = reshape_to(imp, x, (int(np.prod(x.shape[:axis])), int(np.prod(x.shape[axis:]))), name=imp.out_name() + "_flat")
    y = imp.emit(op, [flat], {"axis": 1}, name=imp.out_name() + "_2d")
    return reshape_to(imp, y, x.shape)


@converter("ArgMax", "ArgMin")
def arg(imp, node):
    x = imp.input(0)
    if imp.attr("select_last_index", 0):
        imp.fail("select_last_index=1 is not supported")
    return imp.emit("top.arg", [x], {"mode": "max" if node.op_type == "ArgMax" else "min",
                                     "axis": imp.attr("axis", 0) % len(x.shape),
                                     "keepdims": bool(imp.attr("keepdims", 1))})


_REDUCE = {"ReduceMean": "mean", "ReduceMax": "max", "ReduceMin": "min", "ReduceSum": "sum", "ReduceProd": "prod",
           "ReduceL1": "l1", "ReduceL2": "l2", "ReduceSumSquare": "sumsquare", "ReduceLogSumExp": "logsumexp"}


@converter(*_REDUCE)
def reduce(imp, node):
    x = imp.input(0)
    axes = imp.attr("axes")
    if axes is None and len(node.input) > 1:
        a = imp.const_input(1, "axes")
        axes = None if a is None else list(a)
    if axes is None or len(axes) == 0:
        if imp.attr("noop_with_empty_axes", 0):
            return x
        axes = list(range(len(x.shape)))
    axes = sorted(int(a) % len(x.shape) for a in axes)
    return imp.emit("top.reduce", [x], {"mode": _REDUCE[node.op_type], "axes": axes,
                                        "keepdims": bool(imp.attr("keepdims", 1))})
