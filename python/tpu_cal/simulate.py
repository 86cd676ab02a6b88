"""The quantized simulation: run the float (top) module and the lowered (tpu) module on the same inputs and pair
their tensors by op name (lowering keeps every op's name; the casts it inserts, `<producer>_<type>`, have no float
counterpart and are skipped).

    float_t, quant_t = run_both(float_graph, lowered_graph, feeds)     # name -> f32 array, both sides
    rc = simulate_and_report(float_graph, lowered_graph, "in.npz", None, [0.99, 0.9], None)

Quantized tensors are returned as real values (dequantized to float32); f16/bf16 tensors are float32 arrays
already; integer tensors (indices, masks) are returned as they are. `simulate_and_report` is the hook
`tpu-cal lower --test_input` calls: it prints the comparison of the model outputs and returns the exit code
(1 when a similarity is below --tolerance).
"""
from __future__ import annotations

import os
import sys
from typing import Iterable

import numpy as np

from . import quant
from .errors import UserError
from .graph import Graph, Node
from .interp.core import Interpreter
from .metrics import cosine, euclid_similarity, snr_db
from .report import table

SKIP = ("top.weight", "top.none")


def real_value(node: Node, x: np.ndarray) -> np.ndarray:
    """A lowered tensor as real numbers: quantized storage dequantized to float32, everything else as it is."""
    q = node.qtype
    if q is not None:
        return quant.dequantize(x, q)
    return x


def paired_names(float_graph: Graph, lowered_graph: Graph) -> list[str]:
    """Names of the tensors both modules compute (inputs and ops; not weights, not inserted casts), in the
    lowered module's order."""
    fnodes = float_graph.node_map()
    out = []
    for n in lowered_graph.nodes:
        if n.op in SKIP or n.name not in fnodes or fnodes[n.name].op in SKIP:
            continue
        if n.op == "tpu.cast" and "precision" not in n.extra:      # an inserted cast
            continue
        out.append(n.name)
    return out


def _batches(feeds: dict[str, np.ndarray], graph: Graph, batch_size: int):
    nodes = graph.node_map()
    first = graph.inputs[0]
    declared = nodes[first].shape[0] if nodes[first].shape else 1
    total = np.asarray(feeds[first]).shape[0] // max(declared, 1)
    step = max(1, int(batch_size))
    for a in range(0, total, step):
        b = min(total, a + step)
        yield {k: np.asarray(v)[a * declared:b * declared] for k, v in feeds.items()}


def _stack(parts: list[np.ndarray]) -> np.ndarray:
    if len(parts) == 1:
        return parts[0]
    if parts[0].ndim == 0 or any(p.shape[1:] != parts[0].shape[1:] for p in parts):
        return parts[0]      # no batch axis (a shape tensor): the same in every batch
    return np.concatenate(parts)


def run_both(float_graph: Graph, lowered_graph: Graph, feeds: dict[str, np.ndarray], batch_size: int = 8,
             names: Iterable[str] | None = None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Runs both modules on `feeds` (input name -> batch of samples) in batches of `batch_size` samples, keeping
    every tensor. Returns (float tensors, quantized tensors as real values) for every name both compute (or the
    given `names`), each concatenated over the batches."""
    missing = [i for i in float_graph.inputs if i not in feeds]
    if missing:
        raise UserError(f"missing input(s) {', '.join(missing)} (inputs: {', '.join(float_graph.inputs)})")
    if list(lowered_graph.inputs) != list(float_graph.inputs):
        raise UserError(f"the lowered module's inputs ({', '.join(lowered_graph.inputs)}) are not the float "
                        f"module's ({', '.join(float_graph.inputs)})")
    want = list(names) if names is not None else paired_names(float_graph, lowered_graph)
    lnodes = lowered_graph.node_map()
    fi, qi = Interpreter(float_graph), Interpreter(lowered_graph)
    fparts: dict[str, list] = {n: [] for n in want}
    qparts: dict[str, list] = {n: [] for n in want}
    for batch in _batches(feeds, float_graph, batch_size):
        fo = fi.run(batch, keep=want)
        for n in want:
            fparts[n].append(fo[n])
        del fo
        qo = qi.run(batch, keep=want)
        for n in want:
            qparts[n].append(real_value(lnodes[n], qo[n]))
        del qo
    return ({n: _stack(p) for n, p in fparts.items()}, {n: _stack(p) for n, p in qparts.items()})


def compare_rows(ref: dict[str, np.ndarray], got: dict[str, np.ndarray], names: Iterable[str]) -> list[list]:
    """[name, cosine, euclidean similarity, SNR dB] per name (floats compared as float64)."""
    rows = []
    for n in names:
        a, b = np.asarray(ref[n]), np.asarray(got[n])
        if a.shape != b.shape:
            raise UserError(f"tensor '{n}': reference shape {list(a.shape)}, simulated {list(b.shape)}")
        rows.append([n, cosine(a, b), euclid_similarity(a, b), snr_db(a, b)])
    return rows


def _load_feeds(path: str, graph: Graph) -> dict[str, np.ndarray]:
    from .preprocess import Preprocess, load_inputs
    nodes = graph.node_map()
    inputs = [nodes[i] for i in graph.inputs]
    return load_inputs(path, inputs, Preprocess.from_attrs(graph.attrs.get("preprocess")))


def simulate_and_report(float_graph: Graph, lowered_graph: Graph, test_input: str, test_reference: str | None,
                        tolerance, plot_dir: str | None) -> int:
    """The `tpu-cal lower --test_input` hook: runs the float and the lowered module on `test_input` (.npz, .npy
    or an image, preprocessed as the float module says), prints the similarity of each model output to the
    reference (the tensors of `test_reference` when given, else the float run), then the per-layer precision and
    outlier tables of every tensor against the float run (`tpu_cal.layer_report`; layers below `tolerance` are
    marked) and, with `plot_dir`, plots of the worst layers; returns 1 when a model output's cosine or euclidean
    similarity is below `tolerance` ([cosine] or [cosine, euclidean]), else 0."""
    feeds = _load_feeds(test_input, float_graph)
    lnodes = lowered_graph.node_map()
    outs = [o for o in float_graph.outputs if o in lnodes]
    if not outs:
        raise UserError("the lowered module computes none of the float module's outputs "
                        f"({', '.join(float_graph.outputs)}); was it lowered from this module?")
    layers = paired_names(float_graph, lowered_graph)          # every tensor, for the per-layer report
    fl, qt = run_both(float_graph, lowered_graph, feeds, names=layers + [o for o in outs if o not in layers])
    ref = dict(fl)
    where = "float module"
    if test_reference:
        from .fileio import read_npz
        data = read_npz(test_reference, "test reference")
        absent = [o for o in outs if o not in data]
        if absent:
            raise UserError(f"{test_reference}: no tensor for output(s) {', '.join(absent)} "
                            f"(it holds {', '.join(list(data)[:5])}{', ...' if len(data) > 5 else ''})")
        ref.update({o: data[o] for o in outs})
        where = os.path.basename(test_reference)
    rows = compare_rows(ref, qt, outs)
    tol = list(tolerance or [])
    print(table(["output", "cosine", "euclidean", "SNR dB"], rows,
                title=f"simulated {lowered_graph.attrs.get('quantize', '')} module vs {where} on "
                      f"{os.path.basename(test_input)}:"))
    from .layer_report import report
    text, _ = report(fl, qt, lowered_graph, tolerance, plot_dir, float_graph=float_graph, names=layers)
    print(text)
    bad = []
    for name, cos, euc, _ in rows:
        if tol and cos < tol[0]:
            bad.append(f"'{name}' cosine {cos:.6f} < {tol[0]}")
        if len(tol) > 1 and euc < tol[1]:
            bad.append(f"'{name}' euclidean similarity {euc:.6f} < {tol[1]}")
    if bad:
        print(f"error: the simulated module is below --tolerance: {'; '.join(bad)}", file=sys.stderr)
        return 1
    return 0
