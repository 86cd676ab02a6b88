"""Per-layer precision reports: float vs quantized tensors, layer by layer, and where channel outliers are.

    rows = layer_rows(float_t, quant_t, lowered_graph)        # one dict per tensor both runs computed
    text, below = precision_table(rows, tolerance=[0.99, 0.9])
    stats = outlier_stats(float_t, lowered_graph)              # one dict per quantized tensor (and MAC weight)
    text = outlier_table(stats)
    text, ok = report(float_t, quant_t, lowered_graph, [0.99], plot_dir)   # both tables (+ plots)

`float_t` / `quant_t` map op names to arrays (`simulate.run_both` returns both: the quantized side already
dequantized to real values). Every function returns data (lists of dicts, so tests check values) and text.

The precision table (seed 004's "Quant Precision Table [PerLayer Reference]") lists per tensor: op name, op type,
precision, shape, cosine, Euclidean similarity and SNR in dB (`tpu_cal.metrics`), worst cosine first (a NaN
cosine counts as the worst), and ends with a summary line: how many layers are below the --tolerance cosine
(and Euclidean similarity, when a second value is given).

The outlier table (seed 004's "Ratio of outliers in tensor"): for a tensor held per tensor in int8, each channel c
has a level log2(max|x| over the tensor / max|x| over channel c). A channel at level k spans at most 127 / 2**k
of the int8 grid, so it keeps at most 7 - k of int8's 7 magnitude bits: level >= 3 keeps 4 bits or fewer,
level >= 6 one bit. The seed writes "Log" without a base; base 2 makes the levels read as lost bits. Columns:
the share of all-zero channels ("sparse", no level) and the share of channels at level >= 3, 4, 5, 6. Activations
use the float run's tensor (the values the quantization has to represent); the channel axis is 1 for NCHW-style
tensors (rank >= 4, and rank 3 from the conv family) and the last axis otherwise ([batch, tokens, hidden]).
Weights of conv / deconv / matmul are listed too, per output channel on the axis docs/lowering.md gives
(conv 0, deconv 1, matmul the last), so the table shows why a layer needs per-channel weights.
"""
from __future__ import annotations

import math

import numpy as np

from .errors import UserError
from .graph import Graph, Node
from .metrics import cosine, euclid_similarity, snr_db
from .report import table

LEVELS = (3, 4, 5, 6)
# ops whose rank-3 tensors are [N, C, L] (1-D convolutions and pools), so the channel axis is 1
_NCL_OPS = frozenset({"conv", "deconv", "maxpool", "avgpool", "scale", "group_norm", "prelu", "pad", "resize"})
_MAC_AXIS = {"conv": 0, "deconv": 1, "matmul": -1}


def _short(op: str) -> str:
    return op.split(".", 1)[-1]


def _node_info(graph: Graph | None) -> dict[str, Node]:
    return graph.node_map() if graph is not None else {}


def precision_of(node: Node | None) -> str:
    """The `precision` a lowered op carries; for a node without one, its element type in words."""
    if node is None:
        return "-"
    p = node.extra.get("precision")
    if p is not None:
        return str(p)
    if node.qtype is not None:
        return {"i8": "INT8", "i4": "INT4"}.get(node.qtype.storage, node.qtype.storage.upper())
    if node.result_type and "bf16" in node.result_type:
        return "BF16"
    if node.result_type and "f16" in node.result_type:
        return "F16"
    return "F32" if np.dtype(node.dtype).kind == "f" else "NONE"


# ------------------------------------------------------------------------------------------- precision table
def layer_rows(float_t: dict, quant_t: dict, graph: Graph | None = None, names=None) -> list[dict]:
    """One dict per name both maps hold (or the given `names`), in that order: name, op (type without the
    dialect, '-' without a graph), precision, shape, cosine, euclid, snr_db. Raises a UserError naming a tensor
    whose two shapes differ."""
    nodes = _node_info(graph)
    if names is None:
        names = [n for n in float_t if n in quant_t]
    rows = []
    with _blas_single():
        for name in names:
            rows.append(_row(name, float_t[name], quant_t[name], nodes.get(name)))
    return rows


def _blas_single():
    """BLAS single-threaded around many small dot products: after the interpreter's pool has run, a
    multithreaded OpenBLAS call on a loaded machine can wait a scheduler slice per call (measured: 6 ms per
    40k-element dot, 100x the work itself)."""
    try:
        from .interp.workers import blas_single as single
        return single()
    except ImportError:
        import contextlib
        return contextlib.nullcontext()


def _row(name, a, b, node) -> dict:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise UserError(f"tensor '{name}': shape {list(a.shape)} in the reference, {list(b.shape)} in the other")
    with np.errstate(all="ignore"):
        return dict(name=name, op=_short(node.op) if node is not None else "-",
                    precision=precision_of(node) if node is not None else "-",
                    shape=list(a.shape), cosine=cosine(a, b), euclid=euclid_similarity(a, b), snr_db=snr_db(a, b))


def _cos_key(r: dict) -> float:
    c = r["cosine"]
    return -math.inf if c != c else c


def sort_worst(rows: list[dict]) -> list[dict]:
    """Rows by cosine, lowest first (NaN first; ties keep their order)."""
    return sorted(rows, key=_cos_key)


def below(rows: list[dict], tolerance) -> list[dict]:
    """Rows under the tolerance: cosine < tolerance[0], or Euclidean similarity < tolerance[1] when given;
    a NaN similarity is always below."""
    tol = list(tolerance or [])
    out = []
    for r in rows:
        bad = False
        if tol:
            bad = not (r["cosine"] >= tol[0])
        if len(tol) > 1:
            bad = bad or not (r["euclid"] >= tol[1])
        if bad:
            out.append(r)
    return out


def _shape_text(shape) -> str:
    return "x".join(str(int(d)) for d in shape) if shape else "scalar"


def precision_table(rows: list[dict], tolerance=None, title: str | None = None, limit: int | None = None
                    ) -> tuple[str, list[dict]]:
    """(text, rows below tolerance). The text is the table worst first plus a summary line."""
    ordered = sort_worst(rows)
    bad = below(ordered, tolerance)
    bad_names = {r["name"] for r in bad}
    shown = ordered if limit is None else ordered[:limit]
    body = [[k + 1, r["name"] + (" *" if r["name"] in bad_names else ""), r["op"], r["precision"],
             _shape_text(r["shape"]), r["cosine"], r["euclid"], r["snr_db"]] for k, r in enumerate(shown)]
    title = title or "Quant precision table, per layer (worst cosine first):"
    text = table(["#", "op name", "type", "precision", "shape", "cosine", "euclidean", "SNR dB"], body, title=title)
    if limit is not None and len(ordered) > limit:
        text += f"\n... {len(ordered) - limit} more layer(s), all with cosine >= {ordered[limit - 1]['cosine']:.6f}"
    text += "\n" + summary_line(ordered, tolerance, bad)
    return text, bad


def summary_line(rows: list[dict], tolerance, bad: list[dict] | None = None) -> str:
    tol = list(tolerance or [])
    if not rows:
        return "no layers compared"
    worst = sort_worst(rows)[0]
    head = f"{len(rows)} layer(s) compared; worst cosine {worst['cosine']:.6f} ('{worst['name']}')"
    if not tol:
        return head
    bad = below(rows, tol) if bad is None else bad
    what = f"cosine {tol[0]}" + (f" or euclidean similarity {tol[1]}" if len(tol) > 1 else "")
    if not bad:
        return f"{head}; all at or above {what}"
    return f"{head}; {len(bad)} of {len(rows)} below {what} (marked *)"


# ------------------------------------------------------------------------------------------- outlier ratios
def channel_axis(x: np.ndarray, op: str | None = None) -> int | None:
    """The channel axis of an activation: 1 for rank >= 4 and for rank-3 outputs of the conv family, the last
    axis for other rank 2-3 tensors, None for scalars and vectors (no channels)."""
    if x.ndim >= 4:
        return 1
    if x.ndim == 3:
        return 1 if op in _NCL_OPS else 2
    if x.ndim == 2:
        return 1
    return None


def outlier_levels(x: np.ndarray, axis: int) -> dict:
    """Per-channel outlier statistics of one tensor along `axis` (see the module docstring): channels, tensor
    and per-channel abs-max, the level of each channel (NaN for an all-zero channel), the sparse ratio and the
    ratio of channels at level >= k for k in LEVELS (all ratios over every channel)."""
    x = np.asarray(x)
    axis = axis % x.ndim
    red = tuple(i for i in range(x.ndim) if i != axis)
    xa = np.abs(x)
    with np.errstate(invalid="ignore"):
        per = np.nanmax(xa, axis=red) if red else xa     # NaN values never decide a maximum
    per = np.nan_to_num(np.asarray(per, np.float64), nan=0.0)
    top = float(per.max()) if per.size else 0.0
    n = int(per.size)
    sparse = per == 0
    levels = np.full(n, np.nan)
    if top > 0:
        levels[~sparse] = np.log2(top / per[~sparse])
    out = dict(channels=n, axis=axis, max_tensor=top, max_channel=per, levels=levels,
               sparse_ratio=float(sparse.mean()) if n else 0.0)
    for k in LEVELS:
        out[f"level>={k}"] = float(np.sum(levels >= k) / n) if n else 0.0   # NaN compares False
    return out


def _weight_of(graph: Graph, name: str) -> np.ndarray | None:
    """A weight node's values as real numbers (quantized weights dequantized)."""
    n = graph.node_map().get(name)
    if n is None or n.op != "top.weight":
        return None
    arr = graph.weights.get(n.attrs["name"])
    if arr is None:
        return None
    q = n.qtype
    if q is not None:
        from .quant import dequantize
        return dequantize(arr, q)
    return np.asarray(arr)


def outlier_stats(tensors: dict, graph: Graph | None = None, weights: bool = True) -> list[dict]:
    """Outlier statistics of every tensor held per tensor in int8/int4 (with a graph: results whose lowered type
    is quantized; without one: every float tensor), from `tensors` (the float run), plus the constant weights
    of conv / deconv / matmul ops per output channel. One dict per tensor: name, kind ('activation' or
    'weight of <op>'), shape and the fields of `outlier_levels`, in graph (or dict) order."""
    nodes = _node_info(graph)
    out = []
    for name, x in tensors.items():
        x = np.asarray(x)
        if x.dtype.kind != "f":
            continue
        node = nodes.get(name)
        if graph is not None:
            if node is None or node.qtype is None or node.op == "top.weight":
                continue
        op = _short(node.op) if node is not None else None
        ax = channel_axis(x, op)
        if ax is None or x.size == 0:
            continue
        st = outlier_levels(x, ax)
        st.update(name=name, kind="activation", shape=list(x.shape), op=op or "-")
        out.append(st)
    if graph is not None and weights:
        seen = set()
        for n in graph.nodes:
            op = _short(n.op)
            if op not in _MAC_AXIS or len(n.inputs) < 2 or n.inputs[1] is None:
                continue
            wname = n.inputs[1]
            w = _weight_of(graph, wname)
            if w is None or w.ndim < 2 or wname in seen:
                continue
            seen.add(wname)
            st = outlier_levels(w, _MAC_AXIS[op] % w.ndim)
            st.update(name=wname, kind=f"weight of {n.name}", shape=list(w.shape), op=op)
            out.append(st)
    return out


def _outlier_key(st: dict):
    return tuple(-st[f"level>={k}"] for k in reversed(LEVELS)) + (-st["sparse_ratio"],)


def outlier_table(stats: list[dict], limit: int | None = 20, min_level: int = LEVELS[0]) -> str:
    """The table of tensors with channel outliers (a channel at level >= min_level, or an all-zero channel),
    most outlying first (by the level >= 6 ratio, then 5, 4, 3), at most `limit` rows."""
    hit = [s for s in stats if s[f"level>={min_level}"] > 0 or s["sparse_ratio"] > 0]
    hit.sort(key=_outlier_key)
    shown = hit if limit is None else hit[:limit]
    title = ("Ratio of outlier channels per tensor [level = log2(max|tensor| / max|channel|): a channel at level k "
             "spans at most 127/2^k int8 steps, i.e. keeps at most 7-k magnitude bits; sparse = all-zero "
             "channels]:")
    rows = [[s["name"], s["kind"], s["channels"], s["sparse_ratio"]] + [s[f"level>={k}"] for k in LEVELS]
            for s in shown]
    text = table(["tensor", "kind", "channels", "sparse channel ratio"] + [f"level>={k} ratio" for k in LEVELS],
                 rows, title=title)
    tail = f"{len(hit)} of {len(stats)} tensor(s) have channel outliers (level >= {min_level}) or all-zero channels"
    if limit is not None and len(hit) > limit:
        tail += f"; the {limit} most outlying shown"
    worst = [s for s in hit if s["kind"] == "activation" and s[f"level>={LEVELS[-1]}"] > 0]
    if worst:
        tail += (f"; {len(worst)} activation(s) with level >= {LEVELS[-1]} channels: per-tensor int8 leaves those "
                 f"channels 1 bit (smoothquant, or a float precision for them, helps)")
    return text + "\n" + tail


# ------------------------------------------------------------------------------------------------- the report
def report(float_tensors: dict, quant_tensors: dict, lowered_graph: Graph | None, tolerance=None,
           plot_dir: str | None = None, float_graph: Graph | None = None, plot_num: int = 5,
           names=None) -> tuple[str, bool]:
    """The per-layer precision table and the outlier table of a simulated run, and the plots of the `plot_num`
    worst layers into `plot_dir` when given. Returns (text, ok): ok is False when a layer is below `tolerance`
    ([cosine] or [cosine, euclidean]), as TPU-MLIR's model_deploy judges every compared tensor.
    `float_graph` (the calibrated top module) gives the plots their cali.threshold when the lowered type has
    no scale; `names` limits the comparison (default: every name both maps hold)."""
    rows = layer_rows(float_tensors, quant_tensors, lowered_graph, names)
    chip = lowered_graph.attrs.get("quantize", "") if lowered_graph is not None else ""
    text, bad = precision_table(rows, tolerance, title=f"Quant precision table, per layer ({chip} simulation vs "
                                                       f"float, worst cosine first):" if chip else None)
    parts = [text]
    parts.append(outlier_table(outlier_stats({r["name"]: float_tensors[r["name"]] for r in rows}, lowered_graph)))
    if plot_dir:
        from .plots import plot_layers
        paths = plot_layers(float_tensors, quant_tensors, sort_worst(rows)[:max(0, plot_num)], plot_dir,
                            lowered_graph=lowered_graph, float_graph=float_graph)
        parts.append(f"plots of the {len(paths)} worst layer(s) -> {plot_dir}")
    return "\n\n".join(parts), not bad
