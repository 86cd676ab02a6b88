"""Softmax correction (seed 001's pseudocode): quantize prob / S instead of prob, multiply the attention output
back by S.

    prob = softmax(Q K^T)            (float)
    scaled_prob = prob / S           quantized on the fixed range [0, 1]
    O = scaled_prob @ V * S

S is the expected maximum probability of the softmax, measured on the calibration samples: the mean, over
samples and softmax rows, of each row's largest probability (`per="row"`; `per="sample"` takes each sample's
largest probability in the whole tensor). Most probabilities are tiny and a threshold of 1 rounds them to zero;
the range [0, S] spends the int8 steps where the probabilities are, and clips the few above S.

On the IR: for a softmax whose probabilities reach the lhs of a matmul (through `where` / reshape / permute, as
the exported attention's NaN guard `where(isnan(p), 0, p)`), a `top.mul` by 1/S named `<softmax>_smc` is put
before the matmul and a `top.mul` by S named `<matmul>_smc` after it; the float function is unchanged. The
quantization is in the thresholds (`fix_thresholds`, after calibration): the probability tensors from the
softmax to the division get threshold S, the division 1, so in int8 the division is an exact identity on the
integers and the matmul sees prob quantized with step S/127.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..graph import Graph, Node
from ..interp.core import Listener
from .common import add_weight, insert_after, redirect, unique_name

TAG = "smc"
ATTR_S = "smc.scale"          # on the inserted division: S
PASS_THROUGH = ("top.where", "top.reshape", "top.permute")


@dataclass
class Attention:
    softmax: str
    chain: list          # probability tensors from the softmax to the matmul's lhs, softmax first
    matmul: str


def find(graph: Graph) -> list[Attention]:
    """Softmaxes whose probabilities (alone) reach the lhs of a matmul with an activation rhs."""
    nodes = graph.node_map()
    users = graph.users()
    out = []
    for sm in graph.nodes:
        if sm.op != "top.softmax":
            continue
        chain, cur = [sm.name], sm
        while True:
            fl = [u for u in users[cur.name] if np.dtype(u.dtype).kind == "f"]
            if len(fl) != 1 or cur.name in graph.outputs:
                break
            u = fl[0]
            if u.op == "top.matmul" and u.inputs[0] == cur.name and u.inputs[1] is not None \
                    and nodes[u.inputs[1]].op != "top.weight" and u.inputs.count(cur.name) == 1:
                out.append(Attention(sm.name, chain, u.name))
                break
            if u.op not in PASS_THROUGH or (u.op == "top.where" and u.inputs[0] == cur.name):
                break
            chain.append(u.name)
            cur = u
    return out


class MaxProb(Listener):
    """Sum and count of the largest probability per softmax row (or per sample) of the chosen softmaxes."""

    def __init__(self, names, per: str = "row"):
        self.names, self.per = set(names), per
        self.sum: dict[str, float] = {}
        self.count: dict[str, int] = {}

    def after_op(self, node: Node, inputs: list, output):
        if node.name not in self.names:
            return None
        a = np.asarray(output, np.float32)
        ax = int(node.attrs["axis"]) % a.ndim
        m = a.max(axis=ax) if self.per == "row" else a.reshape(a.shape[0], -1).max(axis=1)
        self.sum[node.name] = self.sum.get(node.name, 0.0) + float(m.astype(np.float64).sum())
        self.count[node.name] = self.count.get(node.name, 0) + int(m.size)
        return None

    def scales(self) -> dict[str, float]:
        return {k: self.sum[k] / self.count[k] for k in self.sum if self.count[k]}


def _mul(graph: Graph, after: Node, src: str, like: Node, factor: float, name: str) -> Node:
    node = Node("top.mul", unique_name(graph, name), [src], {}, tuple(like.shape), like.dtype)
    insert_after(graph, after, node)
    node.inputs.append(add_weight(graph, f"{node.name}_factor", np.array(factor, np.float32), node))
    return node


def rewrite(graph: Graph, scales: dict[str, float]) -> list[list]:
    """Inserts the division / multiplication around each attention matmul; returns report rows
    [softmax, matmul, S, division op, restoring op]."""
    rows = []
    for att in find(graph):
        s = scales.get(att.softmax)
        nodes = graph.node_map()
        if s is None or not (0 < s <= 1):
            rows.append([att.softmax, att.matmul, s if s is not None else float("nan"), "skipped", ""])
            continue
        mm = nodes[att.matmul]
        last = nodes[att.chain[-1]]
        div = _mul(graph, last, last.name, last, 1.0 / s, f"{att.softmax}_{TAG}")
        div.extra[ATTR_S] = float(s)
        mm.inputs[0] = div.name
        others = graph.users()[mm.name]
        back = _mul(graph, mm, mm.name, mm, s, f"{mm.name}_{TAG}")
        redirect(graph, mm.name, back.name, others)
        graph.outputs = [back.name if o == mm.name else o for o in graph.outputs]
        rows.append([att.softmax, att.matmul, float(s), div.name, back.name])
    return rows


def fix_thresholds(graph: Graph, table: dict) -> int:
    """Sets the thresholds the correction means (table: op name -> (threshold, min, max), changed in place):
    S on the probability tensors from each corrected softmax to its division, 1 on the division. When the
    matmul's output was calibrated before the rewrite (the restoring op has no entry yet), the matmul gets its
    old range / S and the restoring op the old range. Returns how many corrections were fixed."""
    nodes = graph.node_map()
    users = graph.users()
    n = 0
    for div in graph.nodes:
        s = div.extra.get(ATTR_S)
        if s is None:
            continue
        s = float(s)
        cur = nodes[div.inputs[0]]
        while True:                          # back along the probability chain to the softmax
            if cur.name in table:
                _, lo, hi = table[cur.name]
                table[cur.name] = (s, max(0.0, min(lo, s)), min(hi, s))
            if cur.op == "top.softmax" or cur.op not in PASS_THROUGH:
                break
            cur = nodes[cur.inputs[2] if cur.op == "top.where" and nodes[cur.inputs[2]].op != "top.weight"
                        else cur.inputs[1] if cur.op == "top.where" else cur.inputs[0]]
        table[div.name] = (1.0, 0.0, 1.0)
        mm = next((u for u in users[div.name] if u.op == "top.matmul"), None)
        back = next((u for u in users[mm.name] if u.op == "top.mul" and u.name.endswith(TAG)), None) if mm else None
        if back is not None and back.name not in table and mm.name in table:
            th, lo, hi = table[mm.name]
            table[back.name] = (th, lo, hi)
            table[mm.name] = (th / s, lo / s, hi / s)
        n += 1
    return n
