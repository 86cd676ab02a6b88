"""SmoothQuant (Xiao et al., 2022): move activation outliers into the weights with a per-channel scale.

For an activation X read by linear ops (matmul with a constant [K, N] right operand: channel axis last; conv with
group 1: channel axis 1), per input channel j

    s_j = max|X_j| ^ alpha / max|W_j| ^ (1 - alpha)        (max|W_j| over every smoothed consumer's row j)

and X' = X / s, W'_j = s_j W_j, so X' W' = X W. X' is obtained without a new op where X's producer is linear per
channel: LayerNorm over the last axis (gamma/s, beta/s), a matmul with a constant right operand (columns and bias
/ s), a conv or per-channel scale (output channels / s). Other readers of X (a residual add, a graph output) then
get X back through an inserted `top.mul` (last axis) / `top.scale` (axis 1) by s. Where nothing can absorb
1/s, a `top.mul` / `top.scale` by 1/s named `<X>_sq` is inserted before the smoothed consumers (with `insert`);
that op is itself quantized, so it only pays where its own input is held in float (see bench/RESULTS.md).

The float function is unchanged up to float32 rounding. Scales are clipped to [1e-4, 1e4]; a channel that is
all zero in X or in every weight keeps s = 1.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..graph import Graph, Node
from .common import add_weight, insert_after, redirect, set_weight, unique_name, weight_of

S_MIN, S_MAX = 1e-4, 1e4
TAG = "sq"


@dataclass
class Target:
    x: str              # the activation
    axis: int           # its channel axis
    consumers: list     # smoothed readers (matmul / conv nodes reading x as operand 0)


def targets(graph: Graph) -> dict[str, Target]:
    """Activations read by smoothable linear ops, with their channel axis and those readers."""
    nodes = graph.node_map()
    out: dict[str, Target] = {}
    for n in graph.nodes:
        if n.op not in ("top.matmul", "top.conv") or len(n.inputs) < 2 or n.inputs[0] is None:
            continue
        x = nodes[n.inputs[0]]
        w = weight_of(graph, nodes, n.inputs[1])
        if x.op in ("top.weight", "top.none") or w is None or np.dtype(x.dtype).kind != "f" \
                or n.inputs.count(x.name) != 1 or not x.shape:
            continue
        if n.op == "top.matmul":
            if w.ndim != 2 or x.shape[-1] != w.shape[0]:
                continue
            axis = len(x.shape) - 1
        else:
            if int(n.attrs.get("group", 1)) != 1 or len(x.shape) < 2 or x.shape[1] != w.shape[1]:
                continue
            axis = 1
        t = out.setdefault(x.name, Target(x.name, axis, []))
        if t.axis != axis:          # read as [.., K] by a matmul and as NCHW by a conv: leave it alone
            t.axis = -1
        t.consumers.append(n)
    return {k: t for k, t in out.items() if t.axis >= 0}


def weight_ranges(graph: Graph, t: Target) -> np.ndarray:
    """max |W_j| over the smoothed consumers' weights, per input channel j."""
    nodes = graph.node_map()
    r = None
    for c in t.consumers:
        w = np.abs(weight_of(graph, nodes, c.inputs[1]))
        rj = w.max(axis=1) if c.op == "top.matmul" else np.moveaxis(w, 1, 0).reshape(w.shape[1], -1).max(axis=1)
        r = rj if r is None else np.maximum(r, rj)
    return r


def smooth_scales(act: np.ndarray, wr: np.ndarray, alpha: float) -> np.ndarray:
    act = np.asarray(act, np.float64)
    wr = np.asarray(wr, np.float64)
    ok = (act > 0) & (wr > 0) & np.isfinite(act) & np.isfinite(wr)
    s = np.ones_like(act)
    s[ok] = act[ok] ** alpha / wr[ok] ** (1.0 - alpha)
    return np.clip(s, S_MIN, S_MAX)


def _scale_consumer(graph: Graph, c: Node, s: np.ndarray) -> None:
    nodes = graph.node_map()
    w = weight_of(graph, nodes, c.inputs[1]).astype(np.float64)
    if c.op == "top.matmul":
        w = w * s[:, None]
    else:
        w = w * s.reshape((1, -1) + (1,) * (w.ndim - 2))
    set_weight(graph, c, 1, w, TAG)


def _absorb(graph: Graph, p: Node, axis: int, s: np.ndarray) -> str | None:
    """Divides p's output channels by s inside p itself; returns how, or None when p cannot absorb it."""
    nodes = graph.node_map()
    inv = 1.0 / s
    rank = len(p.shape)
    k = len(s)
    if axis == rank - 1 and p.op == "top.layer_norm" and int(p.attrs["axis"]) % rank == rank - 1:
        g = weight_of(graph, nodes, p.inputs[1]) if len(p.inputs) > 1 else None
        b = weight_of(graph, nodes, p.inputs[2]) if len(p.inputs) > 2 else None
        if (len(p.inputs) > 1 and p.inputs[1] is not None and (g is None or g.shape != (k,))) or \
                (len(p.inputs) > 2 and p.inputs[2] is not None and (b is None or b.shape != (k,))):
            return None
        while len(p.inputs) < 3:
            p.inputs.append(None)
        if p.inputs[1] is None:
            p.inputs[1] = add_weight(graph, f"{p.name}_gamma_{TAG}", inv, p)
        else:
            set_weight(graph, p, 1, g * inv, TAG)
        if p.inputs[2] is not None:
            set_weight(graph, p, 2, b * inv, TAG)
        return "folded into layer_norm gamma/beta"
    if p.op == "top.matmul" and axis == rank - 1:
        w = weight_of(graph, nodes, p.inputs[1])
        if w is None or w.ndim != 2 or w.shape[1] != k:
            return None
        b = weight_of(graph, nodes, p.inputs[2]) if len(p.inputs) > 2 and p.inputs[2] is not None else None
        if len(p.inputs) > 2 and p.inputs[2] is not None and (b is None or b.shape != (k,)):
            return None
        set_weight(graph, p, 1, w * inv[None, :], TAG)
        if b is not None:
            set_weight(graph, p, 2, b * inv, TAG)
        return "folded into matmul columns"
    if p.op in ("top.conv", "top.scale") and axis == 1:
        w = weight_of(graph, nodes, p.inputs[1])
        b = weight_of(graph, nodes, p.inputs[2]) if len(p.inputs) > 2 and p.inputs[2] is not None else None
        if w is None or w.shape[0] != k or (len(p.inputs) > 2 and p.inputs[2] is not None
                                            and (b is None or b.shape != (k,))):
            return None
        set_weight(graph, p, 1, w * inv.reshape((-1,) + (1,) * (w.ndim - 1)), TAG)
        if b is not None:
            set_weight(graph, p, 2, b * inv, TAG)
        return f"folded into {p.op[4:]} output channels"
    return None


def _channel_op(graph: Graph, x: Node, axis: int, factor: np.ndarray, name: str) -> Node:
    """A new node x * factor per channel (top.mul on the last axis, top.scale on axis 1), placed after x."""
    op = "top.mul" if axis == len(x.shape) - 1 else "top.scale"
    node = Node(op, unique_name(graph, name), [x.name], {}, tuple(x.shape), x.dtype)
    insert_after(graph, x, node)
    node.inputs.append(add_weight(graph, f"{node.name}_factor", factor, node))
    if op == "top.scale":
        node.inputs.append(add_weight(graph, f"{node.name}_bias", np.zeros_like(factor), node))
    return node


def _ratio(a: np.ndarray) -> float:
    """max / median of per-channel ranges: how far the outlier channels stick out."""
    med = float(np.median(a))
    return float(a.max() / med) if med > 0 else float("inf")


def smoothquant(graph: Graph, absmax: dict[str, np.ndarray], alpha: float = 0.5, insert: bool = True) -> list[list]:
    """Smooths every target activation in place (weights in graph.weights, new nodes in graph.nodes).

    `absmax`: activation name -> per-channel abs-max over the calibration samples. Returns report rows
    [tensor, producer op, what was done, smoothed readers, restored readers, max/median before, after]."""
    rows = []
    for t in targets(graph).values():
        if t.x not in absmax:
            continue
        nodes = graph.node_map()
        x = nodes[t.x]
        act = np.asarray(absmax[t.x], np.float64)
        if len(act) != x.shape[t.axis]:
            continue
        s = smooth_scales(act, weight_ranges(graph, t), alpha)
        users = graph.users()[t.x]
        smoothed = {c.name for c in t.consumers}
        others = [u for u in users if u.name not in smoothed]
        how = None
        if x.op != "top.input" and t.x not in graph.outputs:
            how = _absorb(graph, x, t.axis, s)
        if how is not None:
            if others:
                back = _channel_op(graph, x, t.axis, s, f"{t.x}_{TAG}_restore")
                redirect(graph, t.x, back.name, others)
        elif insert:
            div = _channel_op(graph, x, t.axis, 1.0 / s, f"{t.x}_{TAG}")
            redirect(graph, t.x, div.name, t.consumers)
            how, others = f"{div.op[4:]} op inserted", []
        else:
            rows.append([t.x, x.op, "skipped: nothing absorbs 1/s", len(t.consumers), 0, _ratio(act), _ratio(act)])
            continue
        for c in t.consumers:
            _scale_consumer(graph, c, s)
        rows.append([t.x, x.op, how, len(t.consumers), len(others), _ratio(act), _ratio(act / s)])
    return rows
