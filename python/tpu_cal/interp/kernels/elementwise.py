"""Elementwise kernels. Float tensors stay float32: every result is cast back to the declared dtype."""
from __future__ import annotations

import math

import numpy as np

from ... import native
from ..core import impl, impl_inplace
from ..workers import chunks as _chunks, parallel as _parallel


def _erf(x):
    from scipy.special import erf      # imported on first use: scipy takes 0.2 s to load, and few models need it
    return erf(x)


def _out(node, y):
    return np.asarray(y).astype(node.dtype, copy=False)


def _sigmoid(x):
    # exp of a non-positive argument never overflows
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def _clip(x, lo, hi):
    x = np.asarray(x)
    if x.dtype.kind == "f":     # bounds of the array's own type take numpy's fast path (Python floats: 1.4x slower)
        lo, hi = x.dtype.type(lo), x.dtype.type(hi)
    return np.clip(x, lo, hi)


def _hardswish(x):
    """x * clip(x/6 + 1/2, 0, 1): the native kernel on float32 (one pass, by pieces on the kernel threads), else
    numpy with one temporary; the same operations on the same types, so the same bits either way."""
    x = np.asarray(x)
    lib = native.library_for(x.size, x.dtype == np.float32)
    if lib is not None:
        src = np.ascontiguousarray(x)
        out = np.empty_like(src)
        a, y = src.ctypes.data, out.ctypes.data
        _parallel(lambda c: lib.tc_hardswish(a + 4 * c[0], y + 4 * c[0], c[1] - c[0]),
                  _chunks(src.size, 1 << 16))
        return out
    t = np.asarray(x / np.float32(6))
    if t.dtype.kind != "f":
        return x * np.clip(t + np.float32(0.5), 0, 1)
    t += np.float32(0.5)
    np.clip(t, 0, 1, out=t)
    t *= x
    return t


def _softplus(x):
    return np.logaddexp(0, x)


_UNARY = {
    "relu": lambda n, x: np.maximum(x, 0),
    "leaky_relu": lambda n, x: np.where(x >= 0, x, x * np.float32(n.attrs["alpha"])),
    "clip": lambda n, x: _clip(x, n.attrs["min"], n.attrs["max"]),
    "sigmoid": lambda n, x: _sigmoid(x),
    "silu": lambda n, x: x * _sigmoid(x),
    "hardsigmoid": lambda n, x: np.clip(x * np.float32(n.attrs["alpha"]) + np.float32(n.attrs["beta"]), 0, 1),
    "hardswish": lambda n, x: _hardswish(x),
    "gelu": lambda n, x: (0.5 * x * (1 + np.tanh(np.float32(math.sqrt(2 / math.pi)) * (x + np.float32(0.044715) * x ** 3)))
                          if n.attrs["approximate"] == "tanh" else 0.5 * x * (1 + _erf(x / np.float32(math.sqrt(2))))),
    "tanh": lambda n, x: np.tanh(x),
    "erf": lambda n, x: _erf(x),
    "exp": lambda n, x: np.exp(x),
    "log": lambda n, x: np.log(x),
    "sqrt": lambda n, x: np.sqrt(x),
    "abs": lambda n, x: np.abs(x),
    "neg": lambda n, x: -x,
    "reciprocal": lambda n, x: 1 / x,
    "softplus": lambda n, x: _softplus(x),
    "mish": lambda n, x: x * np.tanh(_softplus(x)),
    "floor": lambda n, x: np.floor(x),
    "not": lambda n, x: np.logical_not(x),
    "isnan": lambda n, x: np.isnan(x),
    "cast": lambda n, x: x,   # _out casts to the declared dtype
}


def _div(a, b):
    if np.issubdtype(np.result_type(a, b), np.integer):
        return np.trunc(np.true_divide(a, b))   # ONNX integer Div truncates toward zero
    return a / b


_BINARY = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "div": _div, "pow": np.power,
    "max": np.maximum, "min": np.minimum, "equal": np.equal, "less": np.less, "greater": np.greater,
    "and": np.logical_and, "or": np.logical_or,
}


def _register():
    for name, f in _UNARY.items():
        impl(f"top.{name}")(lambda node, x, shape, f=f: _out(node, f(node, x)))
    for name, f in _BINARY.items():
        impl(f"top.{name}")(lambda node, a, b, shape, f=f: _out(node, f(a, b)))


_register()


# in place, into an operand nothing else sees (interp.core): the same ufunc loops as `_UNARY`'s, so the same bits
@impl_inplace("top.relu")
def relu_inplace(node, x, shape):
    return np.maximum(x, 0, out=x)


@impl_inplace("top.clip")
def clip_inplace(node, x, shape):
    lo, hi = x.dtype.type(node.attrs["min"]), x.dtype.type(node.attrs["max"])
    return np.clip(x, lo, hi, out=x)


@impl("top.where")
def where(node, c, a, b, shape):
    return _out(node, np.where(c, a, b))


@impl("top.softmax")
def softmax(node, x, shape):
    ax = node.attrs["axis"]
    with np.errstate(invalid="ignore"):   # a row of -inf only (fully masked) gives NaN, as in ONNX Runtime
        e = np.exp(x - x.max(axis=ax, keepdims=True))
        e /= e.sum(axis=ax, keepdims=True)
    return _out(node, e)


@impl("top.log_softmax")
def log_softmax(node, x, shape):
    ax = node.attrs["axis"]
    with np.errstate(invalid="ignore"):
        s = x - x.max(axis=ax, keepdims=True)
        return _out(node, s - np.log(np.exp(s).sum(axis=ax, keepdims=True)))
