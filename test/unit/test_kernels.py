"""Interpreter kernels against independent brute-force references (loops and formulas in float64)."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from tpu_cal.frontend.onnx_ops.common import slice_attrs
from tpu_cal.graph import Node
from tpu_cal.interp.core import KERNELS, _load_kernels

_load_kernels()


def run(op, *inputs, attrs=None, shape=(), dtype="float32"):
    node = Node(op, "n", [], dict(attrs or {}), tuple(shape), dtype)
    return KERNELS[op](node, *inputs, shape=tuple(shape))


def rng(seed=0):
    return np.random.default_rng(seed)


# --------------------------------------------------------------------------------------------------- matmul
def _bcast_index(idx, shape):
    """Index into an operand of batch shape `shape` for the broadcast batch index `idx` (right-aligned)."""
    off = len(idx) - len(shape)
    return tuple(0 if shape[k] == 1 else idx[off + k] for k in range(len(shape)))


def ref_matmul(a, b):
    a, b = a.astype(np.float64), b.astype(np.float64)
    squeeze_a, squeeze_b = a.ndim == 1, b.ndim == 1
    if squeeze_a:
        a = a[None, :]
    if squeeze_b:
        b = b[:, None]
    ba, bb = a.shape[:-2], b.shape[:-2]
    nb = max(len(ba), len(bb))
    pa, pb = (1,) * (nb - len(ba)) + ba, (1,) * (nb - len(bb)) + bb
    batch = tuple(max(x, y) for x, y in zip(pa, pb))
    m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
    out = np.zeros(batch + (m, n))
    for idx in itertools.product(*[range(d) for d in batch]):
        ai, bi = _bcast_index(idx, ba), _bcast_index(idx, bb)
        for i in range(m):
            for j in range(n):
                out[idx + (i, j)] = sum(a[ai + (i, t)] * b[bi + (t, j)] for t in range(k))
    if squeeze_a:
        out = out[..., 0, :]
    if squeeze_b:
        out = out[..., 0]
    return out


@pytest.mark.parametrize("sa,sb", [((3, 4), (4, 5)), ((2, 1, 3, 4), (5, 4, 2)), ((4,), (2, 4, 3)),
                                   ((2, 3, 4), (4,)), ((4,), (4,)), ((1, 3, 2, 4), (2, 1, 4, 3))])
def test_matmul_broadcast(sa, sb):
    r = rng(1)
    a, b = r.standard_normal(sa).astype(np.float32), r.standard_normal(sb).astype(np.float32)
    ref = ref_matmul(a, b)
    y = run("top.matmul", a, b, None, shape=ref.shape)
    assert y.shape == ref.shape and y.dtype == np.float32
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_matmul_bias():
    r = rng(2)
    a, b, c = (r.standard_normal(s).astype(np.float32) for s in ((2, 3, 4), (4, 5), (5,)))
    ref = ref_matmul(a, b)
    for idx in itertools.product(range(2), range(3), range(5)):
        ref[idx] += c[idx[-1]]
    np.testing.assert_allclose(run("top.matmul", a, b, c, shape=ref.shape), ref, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------------- layer_norm
@pytest.mark.parametrize("axis", [1, 2, -1])
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm(axis, affine):
    r = rng(3)
    x = (r.standard_normal((2, 3, 5)) * 3 + 1).astype(np.float32)
    ax = axis % 3
    norm_shape = x.shape[ax:]
    scale = r.standard_normal(norm_shape).astype(np.float32) if affine else None
    bias = r.standard_normal(norm_shape).astype(np.float32) if affine else None
    eps = 1e-5
    ref = np.zeros(x.shape)
    outer = x.shape[:ax]
    for o in itertools.product(*[range(d) for d in outer]):
        inner = list(itertools.product(*[range(d) for d in norm_shape]))
        vals = [float(x[o + i]) for i in inner]
        mean = sum(vals) / len(vals)
        var = sum((v - mean) ** 2 for v in vals) / len(vals)
        for i, v in zip(inner, vals):
            y = (v - mean) / math.sqrt(var + eps)
            if affine:
                y = y * float(scale[i]) + float(bias[i])
            ref[o + i] = y
    y = run("top.layer_norm", x, scale, bias, attrs={"axis": axis, "eps": eps}, shape=x.shape)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------------- softmax
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_softmax(axis):
    r = rng(4)
    x = (r.standard_normal((3, 4, 5)) * 30).astype(np.float32)   # large logits: needs the max shift
    x[0, 0, :] = -np.inf
    x[0, 0, 2] = 1.0                                             # one live entry in a masked row
    y = run("top.softmax", x, attrs={"axis": axis}, shape=x.shape)
    ref = np.zeros(x.shape)
    for idx in itertools.product(*[range(d) for i, d in enumerate(x.shape) if i != axis]):
        line = [idx[:axis] + (k,) + idx[axis:] for k in range(x.shape[axis])]
        m = max(float(x[i]) for i in line)
        e = [math.exp(float(x[i]) - m) for i in line]
        for i, v in zip(line, e):
            ref[i] = v / sum(e)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-7)
    ls = run("top.log_softmax", x, attrs={"axis": axis}, shape=x.shape)
    live = ref > 0
    np.testing.assert_allclose(ls[live], np.log(ref[live]), rtol=1e-4, atol=1e-5)


def test_softmax_fully_masked_row_is_nan():
    x = np.full((1, 4), -np.inf, np.float32)
    assert np.isnan(run("top.softmax", x, attrs={"axis": 1}, shape=x.shape)).all()


# --------------------------------------------------------------------------------------------------- gather
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_gather_negative_indices(axis):
    r = rng(5)
    x = r.standard_normal((4, 5, 6)).astype(np.float32)
    n = x.shape[axis]
    idx = np.array([[0, -1, 2], [-n, n - 1, -2]], np.int64)
    y = run("top.gather", x, idx, attrs={"axis": axis})
    out_shape = x.shape[:axis] + idx.shape + x.shape[axis + 1:]
    assert y.shape == out_shape
    for o in itertools.product(*[range(d) for d in out_shape]):
        pre, ii, post = o[:axis], o[axis:axis + 2], o[axis + 2:]
        k = int(idx[ii])
        k = k + n if k < 0 else k
        assert y[o] == x[pre + (k,) + post]


def test_gather_scalar_index():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    y = run("top.gather", x, np.array(-1, np.int64), attrs={"axis": 1})
    assert y.shape == (3,) and list(y) == [3, 7, 11]


# --------------------------------------------------------------------------------------------------- slice
def _onnx_slice_indices(dim, start, end, step):
    """The ONNX Slice spec, written out: clamp start/end per the sign of step, then walk."""
    if start < 0:
        start += dim
    if end < 0:
        end += dim
    if step > 0:
        start, end = min(max(start, 0), dim), min(max(end, 0), dim)
        return list(range(start, end, step))
    start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
    out, i = [], start
    while i > end:
        out.append(i)
        i += step
    return out


@pytest.mark.parametrize("start,end,step", [(-1, -(2 ** 63), -1), (10, -10, -2), (5, 0, -1), (-2, -100, -3),
                                            (0, 2 ** 63 - 1, 2), (1, -1, 1), (-3, 100, 1), (3, 3, -1),
                                            (6, -7, -1)])
def test_slice_steps(start, end, step):
    x = np.arange(2 * 6 * 3, dtype=np.float32).reshape(2, 6, 3)
    attrs = slice_attrs(x.shape, [start], [end], [1], [step])
    y = run("top.slice", x, attrs=attrs)
    idx = _onnx_slice_indices(6, start, end, step)
    ref = np.stack([x[:, i, :] for i in idx], axis=1) if idx else np.zeros((2, 0, 3), np.float32)
    assert y.shape == ref.shape
    np.testing.assert_array_equal(y, ref)


def test_slice_two_axes_negative_axis():
    x = np.arange(4 * 5, dtype=np.float32).reshape(4, 5)
    attrs = slice_attrs(x.shape, [-1, 1], [-(2 ** 63), 4], [0, -1], [-2, 2])
    y = run("top.slice", x, attrs=attrs)
    rows, cols = _onnx_slice_indices(4, -1, -(2 ** 63), -2), _onnx_slice_indices(5, 1, 4, 2)
    np.testing.assert_array_equal(y, np.array([[x[i, j] for j in cols] for i in rows], np.float32))


# --------------------------------------------------------------------------------------------------- reduce
_REF = {
    "mean": lambda v: sum(v) / len(v), "max": max, "min": min, "sum": sum, "prod": math.prod,
    "l1": lambda v: sum(abs(a) for a in v), "l2": lambda v: math.sqrt(sum(a * a for a in v)),
    "sumsquare": lambda v: sum(a * a for a in v),
    "logsumexp": lambda v: max(v) + math.log(sum(math.exp(a - max(v)) for a in v)),
}


@pytest.mark.parametrize("mode", sorted(_REF))
@pytest.mark.parametrize("axes,keepdims", [([1], True), ([0, 2], False), ([], True), ([2], False)])
def test_reduce(mode, axes, keepdims):
    r = rng(6)
    x = r.uniform(0.5, 1.5, (3, 4, 5)).astype(np.float32)
    if mode == "logsumexp":
        x = x * 100   # exp overflows float32 without the max shift
    y = run("top.reduce", x, attrs={"mode": mode, "axes": axes, "keepdims": keepdims})
    red = axes or [0, 1, 2]
    keep_axes = [a for a in range(3) if a not in red]
    out_shape = tuple(1 if a in red else x.shape[a] for a in range(3)) if keepdims else \
        tuple(x.shape[a] for a in keep_axes)
    assert y.shape == out_shape
    for o in itertools.product(*[range(x.shape[a]) for a in keep_axes]):
        vals = []
        for rr in itertools.product(*[range(x.shape[a]) for a in red]):
            full = [0, 0, 0]
            for a, v in zip(keep_axes, o):
                full[a] = v
            for a, v in zip(red, rr):
                full[a] = v
            vals.append(float(x[tuple(full)]))
        pos = tuple(0 if a in red else o[keep_axes.index(a)] for a in range(3)) if keepdims else o
        np.testing.assert_allclose(y[pos], _REF[mode](vals), rtol=2e-5)


# --------------------------------------------------------------------------------------------------- where
def test_where_broadcast():
    r = rng(7)
    c = r.random((2, 1, 4)) > 0.5
    a = r.standard_normal((3, 1)).astype(np.float32)
    b = np.float32(-np.inf) * np.ones((1,), np.float32)
    y = run("top.where", c, a, b, shape=(2, 3, 4))
    assert y.shape == (2, 3, 4)
    for i, j, k in itertools.product(range(2), range(3), range(4)):
        assert y[i, j, k] == (a[j, 0] if c[i, 0, k] else b[0])


# --------------------------------------------------------------------------------------------------- batch scaling
def test_reshape_folds_scaled_batch():
    x = np.arange(2 * 4 * 6, dtype=np.float32).reshape(2, 4, 6)      # batch 2 of a module declared for batch 1
    y = run("top.reshape", x, shape=(2, 4, 2, 3))
    np.testing.assert_array_equal(y, x.reshape(2, 4, 2, 3))
    y = run("top.reshape", x.reshape(8, 6), shape=(8, 6))
    np.testing.assert_array_equal(run("top.reshape", y, shape=(2, 4, 6)), x)


def test_concat_repeats_constant_per_sample():
    cls = np.arange(3, dtype=np.float32).reshape(1, 1, 3)        # folded at import with the declared batch 1
    x = np.ones((2, 4, 3), np.float32)
    node = Node("top.concat", "c", [], {"axis": 1}, (1, 5, 3), "float32")
    y = KERNELS["top.concat"](node, cls, x, shape=(2, 5, 3))
    assert y.shape == (2, 5, 3)
    for b in range(2):
        np.testing.assert_array_equal(y[b, 0], cls[0, 0])
        np.testing.assert_array_equal(y[b, 1:], x[b])


def test_expand_scaled_batch():
    m = np.array([[[[1, 0, 1]]], [[[0, 1, 1]]]], bool)             # [2,1,1,3]
    y = run("top.expand", m, shape=(2, 1, 3, 3), dtype="bool")
    for b, i, j in itertools.product(range(2), range(3), range(3)):
        assert y[b, 0, i, j] == m[b, 0, 0, j]


# --------------------------------------------------------------------------------------------------- activations
def test_gelu_formulas():
    x = np.linspace(-8, 8, 401, dtype=np.float32)
    y = run("top.gelu", x, attrs={"approximate": "none"}, shape=x.shape)
    ref = [0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x.astype(float)]
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)
    y = run("top.gelu", x, attrs={"approximate": "tanh"}, shape=x.shape)
    ref = [0.5 * v * (1 + math.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3))) for v in x.astype(float)]
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)
