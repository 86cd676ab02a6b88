"""Converters for BERT/ViT-style transformers (MatMul, Gemm, LayerNorm, masks, embeddings).

Besides the plain converters this module registers import-time fusions (`onnx_import.fusion`). Each one is tried
at the last node of its pattern, looks back through the ONNX graph, and checks every operand and constant before it
emits the fused op; the pattern's earlier nodes were already emitted and die in the importer's DCE.

- decomposed LayerNorm  ReduceMean/Sub/Pow|Mul/ReduceMean/Add(eps)/Sqrt/Div[|Mul(Reciprocal)] [*gamma] [+beta]
  -> top.layer_norm named `<final output>_LayerNorm`
- Erf-GELU  x*0.5*(1+erf(x/sqrt2)) and Tanh-GELU  0.5*x*(1+tanh(sqrt(2/pi)*(x+0.044715*x^3))), any order of the
  products and sums, Pow or repeated Mul for the cube -> top.gelu named `<final output>_Gelu`
- MatMul by a constant matrix followed by Add of a last-axis vector -> one top.matmul with bias, named after the Add
- Gather with constant indices that pick every row in order (the flat "batch*len + position" index arithmetic that
  exporters build for attention masks) -> a reshape. At batch 1 both are the same; a reshape stays right when the
  interpreter runs a larger batch, the folded index table would not.
"""
from __future__ import annotations

import math
import weakref
from collections import defaultdict

import numpy as np

from ..onnx_import import converter, fusion
from .common import reshape_to


# ---------------------------------------------------------------------------------------------------------------
# ONNX graph index (producer / consumers of each tensor), built once per import
class _Index:
    def __init__(self, imp):
        g = imp.model.graph
        self.producer = {o: n for n in g.node for o in n.output if o}
        self.consumers: dict[str, list] = defaultdict(list)
        for n in g.node:
            for i in dict.fromkeys(i for i in n.input if i):   # a node reading a tensor twice counts once
                self.consumers[i].append(n)
        self.outputs = {o.name for o in g.output} | set(imp.opt.output_names or ())


_INDEX: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _index(imp) -> _Index:
    ix = _INDEX.get(imp)
    if ix is None:
        ix = _INDEX[imp] = _Index(imp)
    return ix


def _prod(imp, t: str, op_type=None):
    """The ONNX node producing tensor `t` (of type `op_type`, when given), else None."""
    n = _index(imp).producer.get(t)
    if n is None or (op_type is not None and n.op_type not in ((op_type,) if isinstance(op_type, str) else op_type)):
        return None
    if n.domain not in ("", "ai.onnx"):
        return None
    return n


def _single_use(imp, t: str) -> bool:
    ix = _index(imp)
    return len(ix.consumers.get(t, ())) == 1 and t not in ix.outputs


def _const(imp, t: str):
    v = imp.env.get(t)
    return v.data if v is not None and v.const else None


def _scalar(imp, t: str):
    """The value of a one-element constant of rank <= 1 (it broadcasts without changing any shape), else None."""
    c = _const(imp, t)
    if c is None or c.size != 1 or c.ndim > 1 or not np.issubdtype(c.dtype, np.number):
        return None
    return float(c.reshape(-1)[0])


def _close(a, b, rel=1e-5) -> bool:
    return a is not None and abs(a - b) <= rel * abs(b)


def _other(node, t: str):
    """The other input of a binary node that reads `t`."""
    a, b = node.input[0], node.input[1]
    return b if a == t else a


def _reduce_axes(imp, n):
    """Axes of a ReduceMean node (attribute or opset-18 input), None when not constant / keepdims=0."""
    import onnx
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
    if not attrs.get("keepdims", 1):
        return None
    axes = attrs.get("axes")
    if axes is None and len(n.input) > 1 and n.input[1]:
        c = _const(imp, n.input[1])
        if c is None:
            return None
        axes = [int(a) for a in c.reshape(-1)]
    x = imp.env.get(n.input[0])
    if x is None:
        return None
    rank = len(x.shape)
    if not axes:
        if attrs.get("noop_with_empty_axes", 0):
            return None
        axes = list(range(rank))
    return sorted(int(a) % rank for a in axes)


# ---------------------------------------------------------------------------------------------------------------
# plain converters
@converter("MatMul")
def matmul(imp, node):
    a, b = imp.input(0), imp.input(1)
    if not (a.const and b.const) and not (np.issubdtype(a.dtype, np.floating) and np.issubdtype(b.dtype, np.floating)):
        imp.fail(f"expected floating-point operands, got {a.dtype} and {b.dtype}")
    if len(a.shape) == 0 or len(b.shape) == 0:
        imp.fail(f"MatMul operands must have rank >= 1, got shapes {a.shape} and {b.shape}")
    return imp.emit("top.matmul", [a, b, None])


@converter("Gemm")
def gemm(imp, node):
    a, b, c = imp.input(0), imp.input(1), imp.input(2)
    alpha, beta = float(imp.attr("alpha", 1.0)), float(imp.attr("beta", 1.0))
    trans_a, trans_b = int(imp.attr("transA", 0)), int(imp.attr("transB", 0))
    if len(a.shape) != 2 or len(b.shape) != 2:
        imp.fail(f"Gemm expects 2-D A and B, got shapes {a.shape} and {b.shape}")
    base = imp.out_name()
    if trans_a:
        a = imp.const(a.data.T, a.label) if a.const else imp.emit("top.permute", [a], {"order": [1, 0]},
                                                                    name=base + "_transA")
    if b.const and (trans_b or alpha != 1.0):
        w = b.data.T if trans_b else b.data
        if alpha != 1.0:
            w = w * np.asarray(alpha, w.dtype)   # folded into the constant weight
            alpha = 1.0
        b = imp.const(np.asarray(w, order="C"), b.label)
    elif trans_b:
        b = imp.emit("top.permute", [b], {"order": [1, 0]}, name=base + "_transB")
    m, k = a.shape
    if b.shape[0] != k:
        imp.fail(f"Gemm inner dimensions differ: A' is {a.shape}, B' is {b.shape}")
    n = b.shape[1]
    bias = None
    if c is not None and beta == 0.0:
        c = None
    if c is not None:
        try:
            np.broadcast_shapes(c.shape, (m, n))
        except ValueError:
            imp.fail(f"C of shape {c.shape} does not broadcast to the product's shape ({m}, {n})")
        if c.const:
            cd = c.data * np.asarray(beta, c.data.dtype) if beta != 1.0 else c.data
            beta = 1.0
            if cd.ndim >= 1 and cd.shape[-1] == n and cd.size == n and np.issubdtype(cd.dtype, np.floating):
                bias, c = imp.const(np.asarray(cd.reshape(n), order="C"), c.label), None   # a vector on the last axis
            else:
                c = imp.const(cd, c.label)
    last = c is None and alpha == 1.0
    y = imp.emit("top.matmul", [a, b, bias], name=None if last else base + "_matmul")
    if alpha != 1.0:
        y = imp.emit("top.mul", [y, imp.const(np.asarray(alpha, y.dtype))],
                     name=None if c is None else base + "_alpha")
    if c is not None:
        if beta != 1.0:
            c = imp.emit("top.mul", [c, imp.const(np.asarray(beta, c.dtype))], name=base + "_beta")
        y = imp.emit("top.add", [y, c])
    return y


@converter("LayerNormalization")
def layer_normalization(imp, node):
    x, scale, bias = imp.input(0), imp.input(1), imp.input(2)
    rank = len(x.shape)
    if rank == 0:
        imp.fail("LayerNormalization of a scalar")
    axis = int(imp.attr("axis", -1))
    if not -rank <= axis < rank:
        imp.fail(f"axis {axis} out of range for rank {rank}")
    axis %= rank
    ix = _index(imp)
    for extra in node.output[1:]:
        if extra and (ix.consumers.get(extra) or extra in ix.outputs):
            imp.fail("only the normalized output Y is supported (Mean / InvStdDev outputs are read)")
    for v, what in ((scale, "Scale"), (bias, "B")):
        if v is not None:
            try:
                if np.broadcast_shapes(v.shape, x.shape[axis:]) != tuple(x.shape[axis:]):
                    raise ValueError
            except ValueError:
                imp.fail(f"{what} of shape {v.shape} does not broadcast to the normalized shape {x.shape[axis:]}")
    return imp.emit("top.layer_norm", [x, scale, bias], {"axis": axis, "eps": float(imp.attr("epsilon", 1e-5))})


# ---------------------------------------------------------------------------------------------------------------
# fusions
def _normalization(imp, n):
    """If node `n` computes (x - mean(x)) / sqrt(var(x) + eps) over trailing axes: (x, axis, eps), else None."""
    if n is None:
        return None
    if n.op_type == "Div":
        d, s = n.input[0], n.input[1]
    elif n.op_type == "Mul":
        r = next((t for t in n.input if _prod(imp, t, "Reciprocal") and _single_use(imp, t)), None)
        if r is None:
            return None
        d, s = _other(n, r), _prod(imp, r).input[0]
    else:
        return None
    sub = _prod(imp, d, "Sub")
    sqrt = _prod(imp, s, "Sqrt")
    if sub is None or sqrt is None or not _single_use(imp, s):
        return None
    x, m = sub.input[0], sub.input[1]
    mean = _prod(imp, m, "ReduceMean")
    if mean is None or mean.input[0] != x:
        return None
    add = _prod(imp, sqrt.input[0], "Add")
    if add is None:
        return None
    eps_t = next((t for t in add.input if _scalar(imp, t) is not None), None)
    if eps_t is None:
        return None
    eps = _scalar(imp, eps_t)
    var = _prod(imp, _other(add, eps_t), "ReduceMean")
    if var is None:
        return None
    sq = _prod(imp, var.input[0], ("Pow", "Mul"))
    if sq is None:
        return None
    if sq.op_type == "Pow":
        if sq.input[0] != d or _scalar(imp, sq.input[1]) != 2.0:
            return None
    elif not (sq.input[0] == d and sq.input[1] == d):
        return None
    xv = imp.env.get(x)
    if xv is None or xv.const or not np.issubdtype(xv.dtype, np.floating):
        return None
    rank = len(xv.shape)
    axes = _reduce_axes(imp, mean)
    if not axes or axes != _reduce_axes(imp, var) or axes != list(range(rank - len(axes), rank)):
        return None
    if eps < 0:
        return None
    return x, axes[0], eps


def _same_or_new(imp, t: str, data: np.ndarray):
    """The imported constant `t` itself when `data` is it unchanged (one top.weight keeps the initializer's name),
    else a new constant labelled after it."""
    v = imp.env[t]
    if v.data.shape == data.shape and v.data.dtype == data.dtype:
        return v
    return imp.const(data, t)


def _affine_operand(imp, data, x_rank: int, axis: int):
    """A gamma/beta constant without leading unit axes, or None when it would broadcast beyond the normalized
    axes."""
    if data is None or not np.issubdtype(data.dtype, np.floating):
        return None
    d = data
    while d.ndim > 0 and d.shape[0] == 1 and d.ndim > x_rank - axis:
        d = d.reshape(d.shape[1:])
    if d.ndim > x_rank - axis:
        return None
    return d


def _completes_layer_norm(imp, t: str) -> bool:
    """True when the single consumer of `t` is a Mul/Add by a constant, i.e. the pattern goes on past `t`."""
    if not _single_use(imp, t):
        return False
    c = _index(imp).consumers[t][0]
    return c.op_type in ("Mul", "Add") and len(c.input) == 2 and _const(imp, _other(c, t)) is not None


@fusion("Div", "Mul", "Add")
def fuse_layer_norm(imp, node):
    out = node.output[0]
    gamma = beta = None          # tensor names of the affine constants
    core = _normalization(imp, node)
    if core is not None:
        if _completes_layer_norm(imp, out):
            return None          # the consumer (x gamma / + beta) fuses the whole pattern
    else:
        if node.op_type not in ("Mul", "Add") or len(node.input) != 2:
            return None
        inner = next((t for t in node.input if _const(imp, _other(node, t)) is not None and _single_use(imp, t)
                      and _prod(imp, t) is not None), None)
        if inner is None:
            return None
        pn = _prod(imp, inner)
        if node.op_type == "Add":
            beta = _other(node, inner)
            core = _normalization(imp, pn)
            if core is None and pn.op_type == "Mul" and len(pn.input) == 2:
                g = next((t for t in pn.input if _const(imp, t) is not None), None)
                if g is not None and _single_use(imp, _other(pn, g)):
                    core = _normalization(imp, _prod(imp, _other(pn, g)))
                    gamma = g
        else:
            gamma = _other(node, inner)
            core = _normalization(imp, pn)
            if core is not None and _completes_layer_norm(imp, out):
                return None
        if core is None:
            return None
    x, axis, eps = core
    xv = imp.env[x]
    rank = len(xv.shape)
    ops = []
    for t in (gamma, beta):
        if t is None:
            ops.append(None)
            continue
        d = _affine_operand(imp, _const(imp, t), rank, axis)
        if d is None:
            return None
        ops.append(_same_or_new(imp, t, d.astype(xv.dtype, copy=False)))
    return imp.emit("top.layer_norm", [xv] + ops, {"axis": axis, "eps": eps}, name=out + "_LayerNorm")


def _factors(imp, t: str, root: bool = False):
    """Flattens a product tree: (constant product, [tensor names]). Descends only into single-use Mul nodes, Div by
    a scalar constant and Pow by a small integer constant."""
    c = _scalar(imp, t)
    if c is not None:
        return c, []
    n = _prod(imp, t)
    if n is None or not (root or _single_use(imp, t)):
        return 1.0, [t]
    if n.op_type == "Mul" and len(n.input) == 2:
        c1, t1 = _factors(imp, n.input[0])
        c2, t2 = _factors(imp, n.input[1])
        return c1 * c2, t1 + t2
    if n.op_type == "Div":
        d = _scalar(imp, n.input[1])
        if d is not None and d != 0:
            c1, t1 = _factors(imp, n.input[0])
            return c1 / d, t1
    if n.op_type == "Pow":
        p = _scalar(imp, n.input[1])
        if p in (2.0, 3.0) and _scalar(imp, n.input[0]) is None:
            return 1.0, [n.input[0]] * int(p)
    return 1.0, [t]


def _terms(imp, t: str):
    """Flattens a sum tree through single-use Add nodes: (constant sum, [tensor names])."""
    c = _scalar(imp, t)
    if c is not None:
        return c, []
    n = _prod(imp, t, "Add")
    if n is None or not _single_use(imp, t) or len(n.input) != 2:
        return 0.0, [t]
    c1, t1 = _terms(imp, n.input[0])
    c2, t2 = _terms(imp, n.input[1])
    return c1 + c2, t1 + t2


_SQRT1_2 = 1 / math.sqrt(2)
_SQRT_2_PI = math.sqrt(2 / math.pi)


def _gelu_kind(imp, u: str, x_candidates: list):
    """If `u` = 1 + erf(x/sqrt2) or 1 + tanh(sqrt(2/pi)(x + 0.044715x^3)) with x among `x_candidates`:
    (approximate, x), else None."""
    if not _single_use(imp, u):
        return None
    c, ts = _terms(imp, u)
    if not _close(c, 1.0) or len(ts) != 1:
        return None
    f = _prod(imp, ts[0], ("Erf", "Tanh"))
    if f is None or not _single_use(imp, ts[0]):
        return None
    k, inner = _factors(imp, f.input[0])
    if f.op_type == "Erf":
        if len(inner) == 1 and inner[0] in x_candidates and _close(k, _SQRT1_2):
            return "none", inner[0]
        return None
    if len(inner) != 1 or not _close(k, _SQRT_2_PI):
        return None
    c2, ts2 = _terms(imp, inner[0])
    if c2 != 0.0 or len(ts2) != 2:
        return None
    for lin, cub in (ts2, ts2[::-1]):
        if lin not in x_candidates:
            continue
        k3, t3 = _factors(imp, cub)
        if t3 == [lin] * 3 and _close(k3, 0.044715):
            return "tanh", lin
    return None


@fusion("Mul")
def fuse_gelu(imp, node):
    k, ts = _factors(imp, node.output[0], root=True)
    if len(ts) != 2 or not _close(k, 0.5):
        return None
    for u, x in (ts, ts[::-1]):
        if u == x or _prod(imp, u, "Add") is None:
            continue
        kind = _gelu_kind(imp, u, [x])
        if kind is not None:
            xv = imp.env[kind[1]]
            if xv.const or not xv.shape or not np.issubdtype(xv.dtype, np.floating):
                return None
            return imp.emit("top.gelu", [xv], {"approximate": kind[0]}, name=node.output[0] + "_Gelu")
    return None


def _clip_bounds(imp, n):
    """(min, max) of an ONNX Clip node as floats (attributes before opset 11, constant inputs after), or None."""
    import onnx
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
    lo, hi = attrs.get("min"), attrs.get("max")
    if len(n.input) > 1 and n.input[1]:
        lo = _scalar(imp, n.input[1])
    if len(n.input) > 2 and n.input[2]:
        hi = _scalar(imp, n.input[2])
    return None if lo is None or hi is None else (float(lo), float(hi))


@fusion("Div", "Mul")
def fuse_hard_swish(imp, node):
    """x * clip(x + 3, 0, 6) / 6 (PaddlePaddle's exported hardswish, in any order of the product) as one
    top.hardswish: TPU-MLIR's op, one int8 tensor instead of four, one layer for the searches."""
    k, ts = _factors(imp, node.output[0], root=True)
    if len(ts) != 2 or not _close(k, 1 / 6):
        return None
    for c, x in (ts, ts[::-1]):
        clip = _prod(imp, c, "Clip")
        if clip is None or not _single_use(imp, c) or _clip_bounds(imp, clip) != (0.0, 6.0):
            continue
        add = _prod(imp, clip.input[0], "Add")
        if add is None or not _single_use(imp, clip.input[0]) or len(add.input) != 2 or x not in add.input:
            continue
        if not _close(_scalar(imp, _other(add, x)), 3.0):
            continue
        xv = imp.env[x]
        if xv.const or not xv.shape or not np.issubdtype(xv.dtype, np.floating):
            return None
        return imp.emit("top.hardswish", [xv], {}, name=node.output[0] + "_HardSwish")
    return None


@fusion("Add")
def fuse_matmul_bias(imp, node):
    if len(node.input) != 2:
        return None
    for m, b in (node.input, node.input[::-1]):
        mm = _prod(imp, m, "MatMul")
        if mm is None or not _single_use(imp, m):
            continue
        a, w, bias = imp.env.get(mm.input[0]), imp.env.get(mm.input[1]), _const(imp, b)
        if a is None or w is None or bias is None or a.const or not w.const or w.data.ndim != 2:
            continue
        if not (np.issubdtype(w.dtype, np.floating) and bias.dtype == w.dtype):
            continue
        n = w.shape[1]
        if bias.size != n or bias.ndim == 0 or bias.shape[-1] != n or bias.ndim > max(len(a.shape), 1):
            continue
        return imp.emit("top.matmul", [a, w, _same_or_new(imp, b, bias.reshape(n))])
    return None


@fusion("Gather")
def fuse_identity_gather(imp, node):
    x, idx = imp.input(0), imp.input(1)
    if x is None or idx is None or x.const or not idx.const or len(x.shape) == 0:
        return None
    axis = int(imp.attr("axis", 0))
    if not -len(x.shape) <= axis < len(x.shape):
        return None
    axis %= len(x.shape)
    n = x.shape[axis]
    flat = idx.data.reshape(-1).astype(np.int64)
    flat = np.where(flat < 0, flat + n, flat)
    if flat.size != n or not np.array_equal(flat, np.arange(n)):
        return None
    return reshape_to(imp, x, x.shape[:axis] + idx.shape + x.shape[axis + 1:], name=imp.out_name())


@converter("GatherND")
def gather_nd(imp, node):
    """GatherND with constant indices (torch's dynamo exporter builds attention masks with it): a row gather on the
    data with its first k axes flattened, or a plain reshape when the indices pick every row in order."""
    x, idx = imp.input(0), imp.input(1)
    if int(imp.attr("batch_dims", 0)) != 0:
        imp.fail("batch_dims != 0 is not supported")
    if not idx.const:
        imp.fail("indices must be a constant for the given input shapes (they depend on the model inputs)")
    ind = idx.data.astype(np.int64)
    k = ind.shape[-1] if ind.ndim else 0
    if ind.ndim == 0 or not 1 <= k <= len(x.shape):
        imp.fail(f"indices of shape {idx.shape} do not index data of shape {x.shape}")
    lead = x.shape[:k]
    ind = np.where(ind < 0, ind + np.array(lead, np.int64), ind)
    if (ind < 0).any() or (ind >= np.array(lead, np.int64)).any():
        imp.fail(f"indices out of range for data of shape {x.shape}")
    rows = int(np.prod(lead))
    linear = np.ravel_multi_index(tuple(np.moveaxis(ind, -1, 0)), lead) if rows else np.zeros(ind.shape[:-1], np.int64)
    target = tuple(ind.shape[:-1]) + tuple(x.shape[k:])
    if linear.size == rows and np.array_equal(linear.reshape(-1), np.arange(rows)):
        return reshape_to(imp, x, target, name=imp.out_name())
    flat = reshape_to(imp, x, (rows,) + tuple(x.shape[k:]), name=imp.out_name() + "_rows")
    return imp.emit("top.gather", [flat, imp.const(linear.astype(np.int64))], {"axis": 0})
