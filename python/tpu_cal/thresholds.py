"""Symmetric quantization thresholds from streamed statistics (`tpu_cal.stats.TensorStats`).

Every method is a function ``fn(stats, bits=8) -> float`` in `METHODS`, keyed by the name TPU-MLIR writes in the
cali_table header (``kl``, ``mse``, ``max``, ``percentile9999``, ``aciq_gauss``, ``aciq_laplace``,
``torch_observer``); `canonical_method` maps run_calibration spellings (``use_kl``, ``use_mse``, ``KL``,
``use_torch_observer_for_cali``, ...) onto them. The raw functions may return 0 or NaN on degenerate
inputs; `compute_threshold` / `table_entry` always return a positive finite threshold:

- a tensor never seen, or all zeros: ``ZERO_FALLBACK`` (1e-5, TPU-MLIR's value for all-zero layers), with
  min/max written as (0, 1e-5);
- a constant tensor (min == max != 0): ``|value|``, which represents it exactly;
- otherwise a non-finite or non-positive result falls back to the abs-max, and every threshold is clamped
  to ``[absmax * 1e-6, absmax]`` (a threshold above the abs-max only wastes levels; TPU-MLIR clamps Octav
  and ACIQ the same way).

Bounded outputs. Sigmoid, hard-sigmoid and softmax produce values in [0, 1] (tanh in [-1, 1]); rounding
noise there is at most ``1/(2*127)`` at full range, so clipping buys little, while a clipped threshold
destroys exactly the values that matter (saturated gates, the winning probability). TPU-MLIR's KLD gives a
[0, 1] sigmoid output 0.0625 (its importer then ignores the table and forces [0, 1] for sigmoid and
softmax). Our rule, for an op with known output bounds: the threshold is the observed abs-max (never above
the bound) and the min/max columns the observed ones, whatever the method says, so calibration takes no
histogram of these tensors. `output_bounds` knows which ops are bounded.

Method notes (facts from the TPU-MLIR calibration chapter and its reference implementation):

- kl: TPU-MLIR's KLD on the abs histogram with exact zeros removed. Candidates are every multiple i of
  ``2**(bits-1)`` bins (128 for int8) up to the populated range; P is the first i bins with everything
  beyond folded into bin i-1, normalised by the total; Q spreads each group of i/128 bins' sum evenly over
  that group's non-empty bins (empty bins stay 0), normalised by the sum of the first i bins; the
  divergence is ``sum(P * (log(P + 1e-30) - log(Q + 1e-30)))``; the first minimum wins and the threshold is
  the upper edge ``i * w``. With the default one-pass histogram there are 16 to 32 candidates (at least
  2048 bins over the abs-max), with a two-pass histogram exactly 16 as in TPU-MLIR.
- mse (Octav): the fixed point ``s = sum(|x|, |x|>s) / (4^-B / 3 / u * #(0<|x|<=s) + #(|x|>s))``
  (u = 4 for a non-negative tensor, whose unsigned grid is twice as fine, as TPU-MLIR does), started at
  the mean |x| of the non-zeros and iterated on the histogram (the bin holding s split linearly), on the
  whole data set rather than averaged per batch.
- percentile9999: max(|q(0.0001)|, |q(0.9999)|) of the signed values; min/max columns are those
  quantiles (as TPU-MLIR writes them).
- aciq_gauss / aciq_laplace: |mean| + alpha * sigma and |mean| + beta * b (ACIQ clips around the mean, and a
  symmetric range has to reach it: post-ReLU tensors have a large mean), where alpha and beta minimise the ACIQ paper's
  (Banner et al., "ACIQ: Analytical Clipping for Integer Quantization of Neural Networks") clipping +
  rounding MSE; for 8 bits alpha = 3.9240 and beta = 9.8968 (TPU-MLIR ships 3.92403337 and 9.89675982).
  sigma is the exact streamed standard deviation (``gauss_sigma="range"`` selects ACIQ's and TPU-MLIR's
  estimate from the range, ``(max - min) * 0.175 * (1 + sqrt(pi * ln 4)) / sqrt(2 ln N)``); b is the mean
  absolute deviation from the histogram.
- torch_observer: torch.ao HistogramObserver's greedy search (``_non_linear_param_search``) over the signed
  histogram restricted to [min, max] (merged to at most `stats.bins` bins), minimising its L2 estimate
  of the quantization error for 2**bits levels; then per-tensor affine qparams, and threshold
  ``scale * max(zp - qmin, qmax - zp)``; min/max columns ``scale * (qmin - zp)``, ``scale * (qmax - zp)``.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, Mapping

import numpy as np

from .errors import UserError
from .stats import TensorStats

ZERO_FALLBACK = 1e-5
MIN_FRACTION = 1e-6

# ops whose output range is known from the op type alone
_BOUNDS = {
    "top.sigmoid": (0.0, 1.0),
    "top.hardsigmoid": (0.0, 1.0),
    "top.softmax": (0.0, 1.0),
    "top.tanh": (-1.0, 1.0),
    # clip (ReLU6 and the like) is bounded by its own attributes; the rule only needs to know it is bounded.
    # Without it KLD cuts ReLU6 outputs to ~4.5 and EfficientNet-Lite0 loses 0.012 of output cosine
    "top.clip": (-math.inf, math.inf),
}


def output_bounds(op_type: str) -> tuple[float, float] | None:
    """(lo, hi) for ops whose outputs are bounded by construction, else None."""
    return _BOUNDS.get(op_type)


# ----------------------------------------------------------------------------- methods
def max_threshold(st: TensorStats, bits: int = 8) -> float:
    return st.absmax


def kld_threshold(st: TensorStats, bits: int = 8) -> float:
    counts, w = st.abs_histogram(include_zeros=False)
    nz = np.flatnonzero(counts)
    if nz.size == 0:
        return math.nan
    levels = 2 ** (bits - 1)
    n = -(-(int(nz[-1]) + 1) // levels) * levels
    h = np.zeros(n, np.float64)
    m = min(n, counts.size)
    h[:m] = counts[:m]
    total = h.sum()
    best_i, best_kl = levels, math.inf
    for i in range(levels, n + 1, levels):
        p = h[:i].copy()
        p[-1] += h[i:].sum()
        p /= total
        groups = h[:i].reshape(levels, i // levels)
        filled = groups > 0
        per_bin = groups.sum(axis=1) / np.maximum(filled.sum(axis=1), 1)
        q = np.where(filled, per_bin[:, None], 0.0).ravel() / max(h[:i].sum(), 1.0)
        kl = float(np.sum(p * (np.log(p + 1e-30) - np.log(q + 1e-30))))
        if kl < best_kl:
            best_i, best_kl = i, kl
    return best_i * w


def octav_threshold(st: TensorStats, bits: int = 8, unsigned: bool | None = None,
                    max_iter: int = 100, rtol: float = 1e-7) -> float:
    counts, w = st.abs_histogram(include_zeros=False)
    c = counts.astype(np.float64)
    nz = c.sum()
    if nz == 0:
        return math.nan
    if unsigned is None:
        unsigned = st.min >= 0
    f = 4.0 ** -bits / 3.0 / (4.0 if unsigned else 1.0)
    centres = (np.arange(c.size) + 0.5) * w
    cum_n = np.cumsum(c)
    cum_s = np.cumsum(c * centres)
    total_s = cum_s[-1]
    s = total_s / nz
    for _ in range(max_iter):
        k = min(int(s / w), c.size - 1)
        frac = min(max(s / w - k, 0.0), 1.0)
        below = (cum_n[k - 1] if k else 0.0) + frac * c[k]
        above_n = nz - below
        above_s = (total_s - cum_s[k]) + (1.0 - frac) * c[k] * (s + (k + 1) * w) / 2.0
        s_new = above_s / (f * below + above_n)
        if not s_new > 0:
            break
        done = abs(s_new - s) <= rtol * s
        s = s_new
        if done:
            break
    return float(s)


def percentile_range(st: TensorStats, q: float = 0.9999) -> tuple[float, float]:
    """(q(1-q), q(q)) of the signed values, from the histogram."""
    return st.quantile(1.0 - q), st.quantile(q)


def percentile9999_threshold(st: TensorStats, bits: int = 8) -> float:
    lo, hi = percentile_range(st, 0.9999)
    return max(abs(lo), abs(hi))


@functools.lru_cache(maxsize=None)
def aciq_alpha(bits: int, dist: str) -> float:
    """The clipping value, in units of sigma (gauss) or b (laplace), that minimises ACIQ's MSE estimate
    clip(alpha) + alpha^2 / (3 * 4^bits)."""
    from scipy.optimize import brentq
    from scipy.special import erfc
    r = 3.0 * 4.0 ** bits
    if dist == "laplace":      # d/da [2 b^2 exp(-a/b) + a^2/r] = 0  with b = 1
        return brentq(lambda a: a - r * math.exp(-a), 1e-3, 200.0, xtol=1e-12)
    if dist == "gauss":        # d/da [(a^2+1) erfc(a/sqrt2) - sqrt(2/pi) a exp(-a^2/2) + a^2/r] = 0
        return brentq(lambda a: a * erfc(a / math.sqrt(2)) - math.sqrt(2 / math.pi) * math.exp(-a * a / 2)
                      + a / r, 1e-3, 50.0, xtol=1e-12)
    raise ValueError(dist)


def aciq_gauss_threshold(st: TensorStats, bits: int = 8, gauss_sigma: str = "std") -> float:
    if gauss_sigma == "range":
        if st.count < 2:
            return math.nan
        const = 0.5 * 0.35 * (1 + math.sqrt(math.pi * math.log(4)))
        sigma = (st.max - st.min) * const / math.sqrt(2 * math.log(st.count))
    else:
        sigma = st.std
    # ACIQ clips around the distribution's mean; a symmetric range must reach mean +- alpha * sigma
    return abs(st.mean) + aciq_alpha(bits, "gauss") * sigma


def aciq_laplace_threshold(st: TensorStats, bits: int = 8) -> float:
    return abs(st.mean) + aciq_alpha(bits, "laplace") * st.mean_abs_deviation()


def _torch_error(h: np.ndarray, bin_width: float, start: int, end: int, dst_n: int) -> float:
    dst_w = bin_width * (end - start + 1) / dst_n
    if dst_w == 0:
        return 0.0
    k = np.arange(h.size, dtype=np.float64)
    begin = (k - start) * bin_width
    stop = begin + bin_width
    db = np.clip(np.floor(begin / dst_w), 0, dst_n - 1)
    de = np.clip(np.floor(stop / dst_w), 0, dst_n - 1)
    half = dst_w / 2
    a = begin - (db + 0.5) * dst_w            # offset of the bin start inside its destination bin
    e = stop - (de + 0.5) * dst_w             # offset of the bin end inside its destination bin
    # squared error of a uniform density over [begin, stop) against the destination bin centres
    err = (half ** 3 - a ** 3) + (de - db - 1) * (2 * half ** 3) + (e ** 3 + half ** 3)
    return float(np.dot(h / bin_width, err) / 3.0)


def _torch_search(h: np.ndarray, bin_width: float, dst_n: int) -> tuple[int, int]:
    """HistogramObserver's greedy search: shrink [start, end] from the side that moves more bins per 1e-5
    of probability mass, stopping when the error estimate stops improving. Runs of steps that change no
    bin are skipped in one go (same result as stepping through them)."""
    total = float(h.sum())
    csum = np.cumsum(h, dtype=np.float64)
    step = 1e-5
    a_steps = b_steps = 0
    start, end = 0, h.size - 1
    norm_min = math.inf
    while a_steps * step < 1.0 - b_steps * step:
        na = (a_steps + 1) * step
        nbeta = 1.0 - (b_steps + 1) * step
        l = int(np.searchsorted(csum, na * total, side="left"))
        l = min(max(l, start), end)
        r = int(np.searchsorted(csum, nbeta * total, side="right")) - 1
        r = max(min(r, end), start)
        nstart, nend = start, end
        if l - start > end - r:
            nstart = l
            a_steps += 1
        else:
            nend = r
            b_steps += 1
        if nstart == start and nend == end:
            if start == end:             # a single bin: nothing can move any more
                break
            # nothing moves until beta drops below csum[end]/total: jump there
            jump = int(math.floor((1.0 - csum[end] / total) / step)) - 2
            b_steps = max(b_steps, jump)
            continue
        norm = _torch_error(h, bin_width, nstart, nend, dst_n)
        if norm > norm_min:
            break
        norm_min = norm
        start, end = nstart, nend
    return start, end


def torch_observer_qparams(st: TensorStats, bits: int = 8) -> tuple[float, float, float]:
    """(threshold, min, max) from the HistogramObserver search and per-tensor affine qparams."""
    if not st.has_histogram:
        return math.nan, st.min, st.max
    counts, edges = st.signed_histogram()
    nz = np.flatnonzero(counts)
    b0, b1 = int(nz[0]), int(nz[-1])
    h = counts[b0:b1 + 1].astype(np.float64)
    w = st.width
    g = 1
    while h.size > st.bins:                  # merge to at most `bins` bins, like torch's `bins` over [min, max]
        if h.size % 2:
            h = np.append(h, 0.0)
        h = h[0::2] + h[1::2]
        g *= 2
    w *= g
    lo_edge = float(edges[b0])
    start, end = _torch_search(h, w, 2 ** bits)
    new_min, new_max = lo_edge + w * start, lo_edge + w * (end + 1)
    qmin, qmax = -2 ** (bits - 1), 2 ** (bits - 1) - 1
    min_neg, max_pos = min(new_min, 0.0), max(new_max, 0.0)
    scale = max((max_pos - min_neg) / (qmax - qmin), float(np.finfo(np.float32).eps))
    zp = int(min(max(qmin - np.round(min_neg / scale), qmin), qmax))
    th = scale * max(zp - qmin, qmax - zp)
    return float(th), float(scale * (qmin - zp)), float(scale * (qmax - zp))


def torch_observer_threshold(st: TensorStats, bits: int = 8) -> float:
    return torch_observer_qparams(st, bits)[0]


METHODS: dict[str, Callable[..., float]] = {
    "kl": kld_threshold,
    "mse": octav_threshold,
    "max": max_threshold,
    "percentile9999": percentile9999_threshold,
    "aciq_gauss": aciq_gauss_threshold,
    "aciq_laplace": aciq_laplace_threshold,
    "torch_observer": torch_observer_threshold,
}

_ALIASES = {
    "kl": "kl", "kld": "kl", "use_kl": "kl",
    "mse": "mse", "octav": "mse", "use_mse": "mse",
    "max": "max", "minmax": "max", "use_max": "max",
    "percentile9999": "percentile9999", "percentile": "percentile9999", "use_percentile9999": "percentile9999",
    "aciq_gauss": "aciq_gauss", "use_aciq_gauss": "aciq_gauss",
    "aciq_laplace": "aciq_laplace", "use_aciq_laplace": "aciq_laplace",
    "torch_observer": "torch_observer", "torch": "torch_observer",
    "use_torch_observer_for_cali": "torch_observer",
}


_NO_HISTOGRAM = ("max", "aciq_gauss")     # methods that need only min/max/moments


def canonical_method(name: str) -> str:
    """The METHODS key for any spelling run_calibration accepts (case-insensitive)."""
    key = _ALIASES.get(name.strip().lower())
    if key is None:
        raise UserError(f"unknown calibration method '{name}' (choose from: {', '.join(sorted(_ALIASES))})")
    return key


# ----------------------------------------------------------------------------- final thresholds
def finalize(th: float, st: TensorStats, bounds: tuple[float, float] | None = None) -> float:
    """A positive finite threshold from a method's raw answer (rules in the module docstring)."""
    if st.count == 0 or st.absmax == 0:
        return ZERO_FALLBACK
    amax = st.absmax
    if st.min == st.max:
        return amax
    if not (math.isfinite(th) and th > 0):
        th = amax
    if bounds is not None:
        # a bounded output (sigmoid, softmax, ...) keeps its whole observed range: 127 levels over [0, 1] are
        # fine resolution, while clipping saturated values (text maps, confidences) destroys what they mean
        th = amax
    return float(min(max(th, amax * MIN_FRACTION), amax))


def compute_threshold(st: TensorStats, method: str, *, bits: int = 8,
                      bounds: tuple[float, float] | None = None, **options) -> float:
    return table_entry(st, method, bits=bits, bounds=bounds, **options)[0]


def table_entry(st: TensorStats, method: str, *, bits: int = 8,
                bounds: tuple[float, float] | None = None, **options) -> tuple[float, float, float]:
    """(threshold, min, max) for one cali_table line."""
    method = canonical_method(method)
    if st.count == 0 or st.absmax == 0:
        return ZERO_FALLBACK, 0.0, ZERO_FALLBACK
    if bounds is not None:      # a bounded output keeps its whole observed range, whatever the method
        return finalize(st.absmax, st, bounds), st.min, st.max
    if method not in _NO_HISTOGRAM and not st.has_histogram:
        raise RuntimeError(f"method '{method}' needs the histogram: run the histogram pass first "
                           f"(StatsCollector.start_histogram_pass in two-pass mode)")
    lo, hi = st.min, st.max
    if method == "torch_observer":
        raw, tlo, thi = torch_observer_qparams(st, bits)
        th = finalize(raw, st, bounds)
        if th == raw:
            lo, hi = tlo, thi
    elif method == "percentile9999":
        plo, phi = percentile_range(st, 0.9999)
        raw = max(abs(plo), abs(phi))
        th = finalize(raw, st, bounds)
        if th == raw and plo < phi:
            lo, hi = plo, phi
    else:
        th = finalize(METHODS[method](st, bits=bits, **options), st, bounds)
    return th, lo, hi


def compute_table(stats: Mapping[str, TensorStats], method: str, *, op_types: Mapping[str, str] | None = None,
                  bits: int = 8, bounded=(), **options) -> dict[str, tuple[float, float, float]]:
    """(threshold, min, max) for every tensor, in the order of `stats`; bounded ops, and the tensors named in
    `bounded` (see `bounded_tensors`), get the bounded rule."""
    op_types = op_types or {}
    bounded = set(bounded)

    def bounds(name):
        b = output_bounds(op_types.get(name, ""))
        return b if b is not None or name not in bounded else (-math.inf, math.inf)
    return {name: table_entry(st, method, bits=bits, bounds=bounds(name), **options) for name, st in stats.items()}


# ops whose output stays within the range of their data operands: a bounded tensor moved, selected, pooled or
# guarded (softmax -> where(isnan(p), 0, p), as exported attention does) is as bounded as it was
_KEEPS_BOUNDS = frozenset({"top.reshape", "top.permute", "top.slice", "top.pad", "top.maxpool", "top.avgpool",
                           "top.expand", "top.tile", "top.gather", "top.depth_to_space", "top.space_to_depth",
                           "top.concat", "top.where", "top.resize", "top.relu"})


def bounded_tensors(graph) -> set[str]:
    """Names of the tensors bounded by construction: outputs of the bounded ops, and of the ops in
    `_KEEPS_BOUNDS` whose float operands are all bounded tensors or constants (weights)."""
    nodes = graph.node_map()
    out: set[str] = set()
    for n in graph.nodes:
        if n.op in _BOUNDS:
            out.add(n.name)
        elif n.op in _KEEPS_BOUNDS and n.inputs:
            data = [i for i in n.inputs if i is not None and np.dtype(nodes[i].dtype).kind == "f"]
            if data and any(i in out for i in data) and \
                    all(i in out or nodes[i].op == "top.weight" for i in data):
                out.add(n.name)
    return out
