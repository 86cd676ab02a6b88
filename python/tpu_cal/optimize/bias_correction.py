"""Bias correction (Nagel et al., 2019, empirical form): the mean error that quantization adds to a conv / gemm
output is subtracted from its bias.

The calibrated graph is lowered for the chip (all INT8, the chip's float ops in float) and simulated next to the
float graph on the samples (`simulate.run_both`). For every conv and matmul with a constant weight, per output
channel c (axis 1 of a conv, the last axis of a matmul):

    e_c = mean over samples and positions of (quantized output - float output)

where the float output is the float op run on the very input the quantized op read (dequantized), so e_c is
the error the layer itself adds (its int8 weights, its output rounding and clipping), not the shift its inputs
carry in from earlier layers: those are corrected there. (Differences against the float model's own tensors
count every upstream shift once more in each later layer; corrected in one pass that overshoots: on
EfficientNet-Lite0 it lowers the int8 output cosine, see bench/RESULTS.md.) Layers whose output cosine against
the float model over the samples is below `min_layer_cos` get bias_c -= e_c (a zero bias is added where the op
has none). One simulation measures every layer; the thresholds stay as calibrated. `part="weights"` corrects
only the share of the error the int8 weights cause, E[x_q (W_q - W)] (the classic form of the paper), not the
output's rounding and clipping.
"""
from __future__ import annotations

import copy

import numpy as np

from ..calibration import progress
from ..dataset import Dataset, Sample
from ..graph import Graph, Node
from ..lowering import assign_precision, lower
from ..interp.core import KERNELS, Interpreter, Listener
from ..simulate import real_value
from .common import add_weight, set_weight, weight_of

TAG = "bc"


def targets(graph: Graph) -> dict[str, int]:
    """conv / matmul ops with a constant float weight (and a constant or absent bias) -> output channel axis."""
    nodes = graph.node_map()
    out = {}
    for n in graph.nodes:
        if n.op not in ("top.conv", "top.matmul") or len(n.inputs) < 2:
            continue
        w = weight_of(graph, nodes, n.inputs[1])
        if w is None:
            continue
        if len(n.inputs) > 2 and n.inputs[2] is not None and weight_of(graph, nodes, n.inputs[2]) is None:
            continue
        if n.op == "top.matmul":
            if w.ndim != 2:
                continue
            out[n.name] = len(n.shape) - 1
        else:
            out[n.name] = 1
    return out


class _Acc:
    """The three dot products of the cosine, over batches."""

    def __init__(self):
        self.fq = self.ff = self.qq = 0.0

    def add(self, f: np.ndarray, q: np.ndarray):
        f64, q64 = f.astype(np.float64), q.astype(np.float64)
        self.fq += float(np.vdot(f64, q64))
        self.ff += float(np.vdot(f64, f64))
        self.qq += float(np.vdot(q64, q64))

    def cosine(self) -> float:
        if self.ff == 0 and self.qq == 0:
            return 1.0
        return self.fq / max(np.sqrt(self.ff * self.qq), 1e-300)


class _LocalError(Listener):
    """On the lowered graph, summed per channel for each target: part "output", its quantized output minus its
    float op run on the same (dequantized) input with the float weights; part "weights", the float op with the
    dequantized int8 weights minus with the float weights, on that input (the weights' share alone)."""

    def __init__(self, graph: Graph, lowered: Graph, axes: dict[str, int], part: str = "output"):
        self.fnodes, self.lnodes = graph.node_map(), lowered.node_map()
        self.graph, self.axes, self.part = graph, axes, part
        self.err = {n: np.zeros(self.fnodes[n].shape[a]) for n, a in axes.items()}
        self.count = dict.fromkeys(axes, 0)

    def after_op(self, node: Node, inputs: list, output):
        ax = self.axes.get(node.name)
        if ax is None or node.extra.get("precision") not in ("INT8", "INT4"):
            return None
        fn = self.fnodes[node.name]
        x = real_value(self.lnodes[node.inputs[0]], inputs[0])
        ws = [None if i is None else self.graph.weights[self.fnodes[i].attrs["name"]] for i in fn.inputs[1:]]
        if self.part == "weights":
            dw = real_value(self.lnodes[node.inputs[1]], inputs[1]).astype(np.float32) - ws[0]
            diff = KERNELS[fn.op](fn, x, dw, None, shape=output.shape).astype(np.float64)
        else:
            f = KERNELS[fn.op](fn, x, *ws, shape=output.shape)
            diff = real_value(node, output).astype(np.float64) - f
        d = np.moveaxis(diff, ax, 0).reshape(diff.shape[ax], -1)
        self.err[node.name] += d.sum(axis=1)
        self.count[node.name] += d.shape[1]
        return None


def measure(graph: Graph, ds: Dataset, samples: list[Sample], chip: str, batch_size: int = 8, part: str = "output") \
        -> dict[str, tuple[float, np.ndarray]]:
    """Layer name -> (output cosine int8 vs the float model over the samples, mean error the layer adds per
    output channel), for the layers lowered to an integer precision."""
    axes = targets(graph)
    g = copy.deepcopy(graph)
    assign_precision(g, chip, "INT8")
    # every conv with its own int8 result: the error to correct is the one at the conv's output, before the
    # ReLU that deployment fuses into it
    lowered = lower(g, chip, fuse_activations=False)
    lnodes = lowered.node_map()
    axes = {n: a for n, a in axes.items() if n in lnodes}
    names = list(axes)
    acc = {n: _Acc() for n in names}
    local = _LocalError(g, lowered, axes, part)
    fi, qi = Interpreter(g), Interpreter(lowered, [local])
    bar = progress(len(samples), "bias correction")
    try:
        for first, feeds in ds.batches(samples, batch_size):
            fo = fi.run(feeds, keep=names)
            qo = qi.run(feeds, keep=names)
            for n in names:
                acc[n].add(fo[n], real_value(lnodes[n], qo[n]))
            del fo, qo
            bar.update(min(batch_size, len(samples) - first))
    finally:
        bar.close()
    # layers the chip keeps in float add no error of their own: nothing to correct there
    return {n: (acc[n].cosine(), local.err[n] / local.count[n]) for n in names if local.count[n]}


def correct(graph: Graph, stats: dict[str, tuple[float, np.ndarray]], min_layer_cos: float) -> list[list]:
    """Folds the mean errors of the layers below `min_layer_cos` into their biases (in place); returns rows
    [layer, op, cosine, mean |error|, max |error|, corrected]."""
    rows = []
    for name, (cos, err) in stats.items():
        nodes = graph.node_map()
        n: Node = nodes[name]
        fix = cos < min_layer_cos
        if fix:
            if len(n.inputs) > 2 and n.inputs[2] is not None:
                b = weight_of(graph, nodes, n.inputs[2]).astype(np.float64)
                set_weight(graph, n, 2, b - err, TAG)
            else:
                while len(n.inputs) < 3:
                    n.inputs.append(None)
                n.inputs[2] = add_weight(graph, f"{name}_bias_{TAG}", -err, n)
        rows.append([name, n.op, float(cos), float(np.abs(err).mean()), float(np.abs(err).max()),
                     "yes" if fix else ""])
    return rows


def uncorrect(graph: Graph, corrections: dict[str, np.ndarray], names) -> list[str]:
    """Adds back the bias correction of the layers in `names` (in place; those without one are skipped): a layer a
    qtable lifts to float adds none of the int8 error its correction was made for, so with the correction kept it
    would carry the opposite error instead. Returns the layers changed."""
    nodes = graph.node_map()
    done = []
    for name in names:
        err = corrections.get(name)
        if err is None or name not in nodes:
            continue
        n = nodes[name]
        b = weight_of(graph, nodes, n.inputs[2]).astype(np.float64)
        set_weight(graph, n, 2, b + err, "uncorrected")
        done.append(name)
    return done
