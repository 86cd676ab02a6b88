"""Per-layer comparison plots: one PNG per layer, float vs quantized.

    paths = plot_layers(float_t, quant_t, worst_rows, "plots/", lowered_graph=low, float_graph=g)

Each figure has two panels: a scatter of quantized against float values (a deterministic subsample of at most
`max_points`, with the y = x line), and the histogram of the float values (log counts) with the range the
quantized type can hold marked: +-threshold for a symmetric type (scale * qmax of the lowered type, else the
op's `cali.threshold`), [min, max] for an asymmetric one. Files are named after the op (characters other than
letters, digits, `.`, `_`, `-` become `_`, leading and trailing `.`/`_` go; a clash gets `_2`, `_3`, ...),
written atomically. matplotlib draws through its Agg canvas directly (no pyplot, no display, no global backend
switch).
"""
from __future__ import annotations

import os
import re

import numpy as np

from .errors import UserError
from .fileio import atomic_path
from .graph import Graph

MAX_POINTS = 20000


def file_stem(name: str, taken: set | None = None) -> str:
    """A file name (without extension) for an op name: sanitized, at most 120 characters, unique in `taken`."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", name).strip("._") or "tensor"
    stem = stem[:120]
    if taken is not None:
        base, k = stem, 2
        while stem.lower() in taken:
            stem = f"{base}_{k}"
            k += 1
        taken.add(stem.lower())
    return stem


def quant_range(name: str, lowered_graph: Graph | None = None, float_graph: Graph | None = None):
    """(lo, hi) of the real values the tensor's quantized type holds, or None: from the lowered result type
    (+-scale * qmax when symmetric, ((qmin - zp) * s, (qmax - zp) * s) when not), else from the float module's
    cali.threshold (+-th)."""
    if lowered_graph is not None:
        n = lowered_graph.node_map().get(name)
        q = n.qtype if n is not None else None
        if q is not None and q.axis is None:
            s, z = float(q.scale), int(q.zero_point)
            if z == 0:                      # symmetric: +-threshold (th = scale * qmax)
                return -q.qmax * s, q.qmax * s
            return (q.qmin - z) * s, (q.qmax - z) * s
    if float_graph is not None:
        n = float_graph.node_map().get(name)
        th = n.extra.get("cali.threshold") if n is not None else None
        if th is not None:
            return -float(th), float(th)
    return None


def _subsample(n: int, k: int) -> np.ndarray:
    if n <= k:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).choice(n, k, replace=False))


def plot_layer(path: str, name: str, ref: np.ndarray, got: np.ndarray, info: dict | None = None,
               qrange=None, max_points: int = MAX_POINTS) -> str:
    """Writes one figure to `path` (PNG, atomically) and returns the path."""
    from matplotlib.figure import Figure

    info = info or {}
    a = np.asarray(ref, np.float64).ravel()
    b = np.asarray(got, np.float64).ravel()
    fin = np.isfinite(a) & np.isfinite(b)
    a, b = a[fin], b[fin]
    fig = Figure(figsize=(11, 4.6), dpi=100)
    ax1, ax2 = fig.subplots(1, 2)
    idx = _subsample(a.size, max_points)
    ax1.scatter(a[idx], b[idx], s=2, alpha=0.35, color="tab:blue", linewidths=0, rasterized=True)
    if a.size:
        lo, hi = float(min(a.min(), b.min())), float(max(a.max(), b.max()))
        ax1.plot([lo, hi], [lo, hi], color="tab:red", lw=0.8, label="y = x")
        ax1.legend(loc="upper left", fontsize=8)
    ax1.set_xlabel("float")
    ax1.set_ylabel("quantized (dequantized)")
    shown = f" ({idx.size} of {a.size} values)" if idx.size < a.size else ""
    ax1.set_title("quantized vs float" + shown, fontsize=9)
    if a.size:
        counts, edges = np.histogram(a, bins=256)
        ax2.stairs(counts, edges, fill=True, color="tab:gray")
        ax2.set_yscale("log")
    if qrange is not None:
        lo, hi = qrange
        clipped = float(np.mean((a < lo) | (a > hi))) if a.size else 0.0
        for v in (lo, hi):
            ax2.axvline(v, color="tab:red", lw=1.0)
        ax2.set_title(f"float histogram; quantized range [{lo:.4g}, {hi:.4g}] clips {100 * clipped:.3g}%",
                      fontsize=9)
    else:
        ax2.set_title("float histogram (no threshold known)", fontsize=9)
    ax2.set_xlabel("float value")
    ax2.set_ylabel("count")
    parts = [name]
    if info.get("op") not in (None, "-"):
        parts.append(f"{info['op']} {info.get('precision', '')}".strip())
    for key, label in (("cosine", "cosine"), ("euclid", "euclidean"), ("snr_db", "SNR dB")):
        if key in info:
            parts.append(f"{label} {info[key]:.6f}" if key != "snr_db" else f"{label} {info[key]:.2f}")
    fig.suptitle(" | ".join(parts), fontsize=10)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.12, top=0.84, wspace=0.25)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def plot_layers(float_t: dict, quant_t: dict, rows: list[dict], plot_dir: str, lowered_graph: Graph | None = None,
                float_graph: Graph | None = None, max_points: int = MAX_POINTS) -> list[str]:
    """One PNG per row (dicts from layer_report.layer_rows, e.g. the N worst) into `plot_dir` (created when its
    parent exists). Returns the paths written."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UserError("plots need matplotlib (pip install matplotlib)") from None
    if os.path.exists(plot_dir) and not os.path.isdir(plot_dir):
        raise UserError(f"{plot_dir}: exists and is not a folder")
    parent = os.path.dirname(os.path.abspath(plot_dir))
    if not os.path.isdir(parent):
        raise UserError(f"{plot_dir}: parent folder '{parent}' does not exist")
    os.makedirs(plot_dir, exist_ok=True)
    taken: set = set()
    paths = []
    for r in rows:
        name = r["name"]
        path = os.path.join(plot_dir, file_stem(name, taken) + ".png")
        plot_layer(path, name, float_t[name], quant_t[name], r, quant_range(name, lowered_graph, float_graph),
                   max_points)
        paths.append(path)
    return paths
