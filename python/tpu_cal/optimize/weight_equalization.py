"""Cross-layer weight equalization (Nagel et al., 2019, "Data-Free Quantization"): conv -> conv and
conv -> relu -> conv chains get equal per-channel weight ranges.

For a pair (conv1, conv2) where conv1's output channel i is conv2's input channel i, with r1_i = max|W1[i]| and
r2_i = max |W2[:, i]| (over every filter of conv2 that reads channel i: grouped and depthwise convs included),

    s_i = sqrt(r1_i / r2_i),   W1[i] /= s_i,  b1[i] /= s_i,   W2[:, i] *= s_i

which makes both ranges sqrt(r1_i r2_i). Between the two convs only positively homogeneous activations are
allowed (f(x / s) = f(x) / s for s > 0): relu, leaky_relu, prelu with one slope, clip with min 0 (or -inf) and
no upper bound. A clip with a finite bound (ReLU6) is not: clip(x / s, 0, 6) != clip(x, 0, 6) / s, so such a
chain is skipped and the reason reported (scaling the bound would need a per-channel clip, which TPU chips
do not have). Pairs are swept repeatedly until no scale moves more than `tol` (chains conv -> conv -> conv
share convs), at most `max_iter` sweeps. The float function is unchanged up to float32 rounding.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..graph import Graph, Node
from .common import set_weight, weight_of

TAG = "we"
HOMOGENEOUS = ("top.relu", "top.leaky_relu")


@dataclass
class Pair:
    conv1: str
    conv2: str
    via: str | None      # the activation between them, if any


def _clip_ok(n: Node) -> bool:
    lo, hi = float(n.attrs.get("min", 0.0)), float(n.attrs.get("max", np.inf))
    return lo in (0.0, -np.inf) and hi == np.inf


def _why_not(graph: Graph, n: Node) -> str | None:
    """None when `n` commutes with positive per-channel scaling, else the reason it does not."""
    if n.op in HOMOGENEOUS:
        return None
    if n.op == "top.clip":
        if _clip_ok(n):
            return None
        return (f"clip({n.attrs.get('min')}, {n.attrs.get('max')}) has a fixed bound: "
                f"clip(x/s) != clip(x)/s")
    if n.op == "top.prelu":
        slope = weight_of(graph, graph.node_map(), n.inputs[1])
        if slope is not None and slope.size == 1:
            return None
        return "prelu with per-channel slopes"
    return f"{n.op[4:]} is not positively homogeneous"


def _conv_with_weight(graph: Graph, nodes: dict, name: str) -> Node | None:
    n = nodes.get(name)
    if n is None or n.op != "top.conv" or len(n.inputs) < 2 or weight_of(graph, nodes, n.inputs[1]) is None:
        return None
    return n


def find_pairs(graph: Graph) -> tuple[list[Pair], list[list]]:
    """Equalizable pairs, and the conv -> activation -> conv chains skipped, as rows [conv1, via, conv2, why]."""
    nodes = graph.node_map()
    users = graph.users()
    outputs = set(graph.outputs)
    pairs, skipped = [], []
    for c1 in graph.nodes:
        if _conv_with_weight(graph, nodes, c1.name) is None or c1.name in outputs or len(users[c1.name]) != 1:
            continue
        u = users[c1.name][0]
        via = None
        if u.op != "top.conv":
            acts = [i for i in u.inputs if i is not None and nodes[i].op != "top.weight"]
            if u.name in outputs or len(users[u.name]) != 1 or acts != [c1.name]:
                continue                     # not a chain (a residual add, a concat, a graph output)
            via, u = u, users[u.name][0]
        c2 = _conv_with_weight(graph, nodes, u.name)
        if c2 is None or c2.inputs[0] != (via.name if via else c1.name) or c2.inputs.count(c2.inputs[0]) != 1:
            continue
        if via is not None:
            why = _why_not(graph, via)
            if why is not None:
                skipped.append([c1.name, via.name, c2.name, why])
                continue
        pairs.append(Pair(c1.name, c2.name, via.name if via else None))
    return pairs, skipped


def _in_ranges(w2: np.ndarray, group: int, channels: int) -> np.ndarray:
    """max |W2[:, i]| per input channel i of a conv with `group` groups (filters [Cout, Cin/group, k...])."""
    cout, cin_g = w2.shape[0], w2.shape[1]
    cout_g = cout // group
    a = np.abs(w2).reshape(group, cout_g, cin_g, -1).max(axis=(1, 3))     # [group, cin_g]
    return a.reshape(channels)


def _scale_inputs(w2: np.ndarray, group: int, s: np.ndarray) -> np.ndarray:
    cout, cin_g = w2.shape[0], w2.shape[1]
    f = s.reshape(group, 1, cin_g)                                         # input channel g*cin_g + j
    shaped = w2.reshape(group, cout // group, cin_g, -1) * f[..., None]
    return shaped.reshape(w2.shape)


def equalize(graph: Graph, max_iter: int = 100, tol: float = 1e-4) -> tuple[list[list], list[list], int]:
    """Equalizes every pair in place; returns (rows [conv1, via, conv2, channels, range ratio before, after],
    skipped rows, sweeps). The range ratio is the mean over channels of max(r1, r2) / min(r1, r2)."""
    pairs, skipped = find_pairs(graph)
    nodes = graph.node_map()
    w = {}                                  # conv name -> float64 filter, bias (None when absent)
    for p in pairs:
        for c in (p.conv1, p.conv2):
            n = nodes[c]
            b = weight_of(graph, nodes, n.inputs[2]) if len(n.inputs) > 2 else None
            w[c] = [weight_of(graph, nodes, n.inputs[1]).astype(np.float64), None if b is None else b.astype(np.float64)]

    def ranges(p):
        w1, w2 = w[p.conv1][0], w[p.conv2][0]
        c = w1.shape[0]
        return np.abs(w1).reshape(c, -1).max(axis=1), _in_ranges(w2, int(nodes[p.conv2].attrs.get("group", 1)), c)

    def ratio(p):
        r1, r2 = ranges(p)
        ok = (r1 > 0) & (r2 > 0)
        return float(np.mean(np.maximum(r1, r2)[ok] / np.minimum(r1, r2)[ok])) if ok.any() else 1.0

    valid = [p for p in pairs if w[p.conv1][0].shape[0] == _channels_in(w[p.conv2][0], nodes[p.conv2])]
    before = {p.conv1 + p.conv2: ratio(p) for p in valid}
    sweeps = 0
    for sweeps in range(1, max_iter + 1):
        moved = 0.0
        for p in valid:
            r1, r2 = ranges(p)
            s = np.ones_like(r1)
            ok = (r1 > 0) & (r2 > 0)
            s[ok] = np.sqrt(r1[ok] / r2[ok])
            moved = max(moved, float(np.abs(np.log(s)).max()) if s.size else 0.0)
            w1, b1 = w[p.conv1]
            w[p.conv1][0] = w1 / s.reshape((-1,) + (1,) * (w1.ndim - 1))
            if b1 is not None:
                w[p.conv1][1] = b1 / s
            w[p.conv2][0] = _scale_inputs(w[p.conv2][0], int(nodes[p.conv2].attrs.get("group", 1)), s)
        if moved < tol:
            break
    for c, (filt, bias) in w.items():
        n = nodes[c]
        set_weight(graph, n, 1, filt, TAG)
        if bias is not None:
            set_weight(graph, n, 2, bias, TAG)
    rows = [[p.conv1, p.via or "", p.conv2, w[p.conv1][0].shape[0], before[p.conv1 + p.conv2], ratio(p)]
            for p in valid]
    return rows, skipped, sweeps


def _channels_in(w2: np.ndarray, conv2: Node) -> int:
    return w2.shape[1] * int(conv2.attrs.get("group", 1))
