"""Data-movement, reduction, gather and matmul kernels."""
from __future__ import annotations

import numpy as np

from ..core import impl
from ..workers import matmul as _matmul
from .nn import fused_relu


@impl("top.input")
def input_(node, x, shape):
    return x


@impl("top.reshape")
def reshape(node, x, shape):
    if int(np.prod(shape)) == x.size:
        return x.reshape(shape)
    return x.reshape((-1,) + tuple(shape[1:]))   # batch folded into the first axis


@impl("top.permute")
def permute(node, x, shape):
    return np.asarray(np.transpose(x, node.attrs["order"]), order="C")


@impl("top.slice")
def slice_(node, x, shape):
    idx = [slice(None)] * x.ndim
    for s, e, st, ax in zip(node.attrs["starts"], node.attrs["ends"], node.attrs["steps"], node.attrs["axes"]):
        idx[ax] = slice(s, None if e == -(2 ** 63) else e, st)   # INT64_MIN end: run to the start of the axis
    return np.asarray(x[tuple(idx)], order="C")


@impl("top.concat")
def concat(node, *xs, shape):
    axis = node.attrs["axis"]
    if axis != 0 and shape and any(x.ndim and x.shape[0] != shape[0] for x in xs):
        # a batch larger than the declared one: operands folded to constants at import (a ViT's class token)
        # carry the declared batch and repeat for every sample
        xs = [x if x.shape[0] == shape[0] or shape[0] % x.shape[0]
              else np.tile(x, (shape[0] // x.shape[0],) + (1,) * (x.ndim - 1)) for x in xs]
    return np.concatenate(xs, axis=axis)


@impl("top.expand")
def expand(node, x, shape):
    return np.asarray(np.broadcast_to(x, np.broadcast_shapes(x.shape, shape)), order="C")


@impl("top.tile")
def tile(node, x, shape):
    return np.tile(x, node.attrs["repeats"])


@impl("top.gather")
def gather(node, x, idx, shape):
    ax = node.attrs["axis"]
    idx = np.asarray(idx).astype(np.int64)
    idx = np.where(idx < 0, idx + x.shape[ax], idx)
    return np.take(x, idx, axis=ax)


_REDUCE = {
    "mean": lambda x, a, k: x.mean(axis=a, keepdims=k, dtype=np.float64 if x.dtype == np.float64 else None),
    "max": lambda x, a, k: x.max(axis=a, keepdims=k),
    "min": lambda x, a, k: x.min(axis=a, keepdims=k),
    "sum": lambda x, a, k: x.sum(axis=a, keepdims=k),
    "prod": lambda x, a, k: x.prod(axis=a, keepdims=k),
    "l1": lambda x, a, k: np.abs(x).sum(axis=a, keepdims=k),
    "l2": lambda x, a, k: np.sqrt((x * x).sum(axis=a, keepdims=k)),
    "sumsquare": lambda x, a, k: (x * x).sum(axis=a, keepdims=k),
    "logsumexp": lambda x, a, k: _logsumexp(x, a, k),
}


def _logsumexp(x, axes, keepdims):
    m = x.max(axis=axes, keepdims=True)
    m = np.where(np.isfinite(m), m, 0).astype(x.dtype)     # all -inf (or inf) slices keep their value
    y = np.log(np.exp(x - m).sum(axis=axes, keepdims=True)) + m
    return y if keepdims else np.squeeze(y, axis=axes)


@impl("top.reduce")
def reduce(node, x, shape):
    axes = tuple(node.attrs["axes"]) or tuple(range(x.ndim))
    return np.asarray(_REDUCE[node.attrs["mode"]](x, axes, bool(node.attrs["keepdims"]))).astype(node.dtype)


@impl("top.arg")
def arg(node, x, shape):
    f = np.argmax if node.attrs["mode"] == "max" else np.argmin
    y = f(x, axis=node.attrs["axis"])
    if node.attrs["keepdims"]:
        y = np.expand_dims(y, node.attrs["axis"])
    return y.astype(node.dtype)


@impl("top.matmul")
def matmul(node, a, b, bias, shape):
    y = _matmul(a, b)
    if bias is not None:
        y = np.add(y, bias, out=y) if isinstance(y, np.ndarray) and y.ndim and y.flags.writeable else y + bias
    return fused_relu(node, np.asarray(y).astype(node.dtype, copy=False))


@impl("top.layer_norm")
def layer_norm(node, x, scale, bias, shape):
    axes = tuple(range(node.attrs["axis"] % x.ndim, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    d = x - mean
    var = (d * d).mean(axis=axes, keepdims=True)
    y = d / np.sqrt(var + np.float32(node.attrs["eps"]))
    if scale is not None:
        y *= scale
    if bias is not None:
        y += bias
    return y.astype(node.dtype, copy=False)
