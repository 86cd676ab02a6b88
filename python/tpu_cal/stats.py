"""Streaming per-tensor statistics for calibration, in memory that does not grow with the number of samples.

`TensorStats` keeps, for one tensor over every batch it has seen:

- count, number of exact zeros, min, max (exact);
- mean and the central moment sums M2, M3, M4 (merged per chunk with Chan/Pebay's pairwise formulas, each
  chunk's sums taken about a shift close to its mean, so a large mean does not cancel the variance);
- one signed histogram of ``2 * side`` equal bins over ``[-R, R)`` (``side = bins * oversample``). The absolute
  value histogram every threshold method uses is this histogram folded at zero, so one pass over the data
  serves KLD, Octav, percentile, ACIQ-Laplace and the torch-observer search alike.

Range growth is exact. The first batch with a non-zero value fixes the bin width ``w``; when a later batch
has ``|x| > R`` the width is multiplied by the smallest power of two ``2**k`` that covers it, and each group of
``2**k`` old bins is summed into one new bin. Bin ``j`` (counted from zero, negative below it) holds
``floor(x / w) == j``; because ``floor(floor(x / w) / 2**k) == floor(x / (w * 2**k))`` and scaling a float by
a power of two is exact, a value binned before a growth lands in exactly the bin it would have had if it had
come after it. (Bin indices are computed as ``floor(float32(x) * float32(1 / w))``; the histogram's edges are
defined by that product, ``edges()`` returns them.) After growth the observed abs-max lies in the upper half
of ``[0, R]``, so at least ``bins * oversample / 2`` bins cover ``[0, absmax]``; with the default
``oversample=2`` that is at least ``bins`` (2048) bins, as fine as TPU-MLIR's histogram over the final
abs-max. A two-pass mode (`start_histogram_pass`) instead fixes ``R = absmax`` from a first pass, giving
exactly ``bins`` bins over ``[0, absmax]``.

Folding: abs bin ``k`` (``k*w <= |x| < (k+1)*w``) is signed bin ``k`` plus signed bin ``-k-1``. A negative value
lying exactly on an edge (``x == -k*w``) lands one abs bin lower than its absolute value would; that only moves
values that sit on an edge, by one bin.

Two implementations give the same results: the histogram, zero count, count, min and max bit for bit, the
moments to about 1e-15 relative (the order of the float64 additions differs). Both cut a batch into chunks of
64 Ki values and take each chunk's moment sums in float64 about a shift near the mean, then merge them; a batch
of 1 Mi values or more is first cut in two halves at a chunk boundary, run on two threads and merged.

- The C kernel of `tpu_cal.native` (compiled on first use; float32 input): one min/max/NaN pass over the batch,
  then one pass that bins, counts zeros and sums moments block by block in L1. About 25-35 ms per 14.4 M values
  on this machine kind (2 cores, one used; see bench/RESULTS.md, "Statistics kernel").
- numpy, when there is no C compiler, for float64 input, or with TPU_CAL_NO_NATIVE=1: per chunk scale, floor,
  convert to int32, `np.bincount`, and float64 differences, products and sums (no BLAS dot: a float64 dot of a
  chunk wakes OpenBLAS's threads, ruinous on a loaded machine). 65-90 ms per 14.4 M values. (`np.histogram`
  of the abs values takes 130 ms, `np.bincount` of full-size scaled indices 86 ms.)
"""
from __future__ import annotations

import ctypes
import math
from typing import Iterable

import numpy as np

from . import native
from .errors import UserError
from .interp.core import RANGE_KEY, Listener
from .interp.workers import parallel

CHUNK = 1 << 16          # values per chunk: the chunk and its three work buffers stay in cache
SPLIT = 1 << 20          # batches of at least this many values are split in two halves, one per thread

_SKIP_OPS = ("top.weight", "top.none")


class NonFiniteValues(UserError):
    """A tensor handed to `TensorStats.update` contains NaN or Inf (`kind` says which)."""

    def __init__(self, kind: str, detail: str = ""):
        self.kind = kind
        super().__init__(f"{kind} in {detail}" if detail else kind)


class _Scratch:
    """Reusable work buffers of the numpy path, shared by every `TensorStats` a collector owns (never per
    tensor)."""

    def __init__(self, size: int = CHUNK):
        self.f0 = np.empty(size, np.float32)
        self.d0 = np.empty(size, np.float64)
        self.d1 = np.empty(size, np.float64)
        self.i0 = np.empty(size, np.int32)
        self.b0 = np.empty(size, np.bool_)


def _float_view(x) -> np.ndarray:
    """A flat view of `x` if it is float32 or float64, else a flat float32 copy (float16, bfloat16, ints:
    exact). Flat views of non-contiguous arrays are copies, except 1-D strided views."""
    a = np.asarray(x)
    if a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float32)
    return a.reshape(-1)


def _minmax_native(lib, flat: np.ndarray) -> tuple[float, float, bool]:
    """min, max (NaN ignored) and whether `flat` holds a NaN, by tc_minmax; on two threads from SPLIT values."""
    parts = [flat] if flat.size < SPLIT else [flat[:flat.size // 2], flat[flat.size // 2:]]
    out = [((ctypes.c_float * 2)(), [False]) for _ in parts]

    def run(k):
        bounds, nan = out[k]
        nan[0] = bool(lib.tc_minmax(parts[k].ctypes.data, parts[k].size, bounds))

    if len(parts) == 1:
        run(0)
    else:
        parallel(run, [0, 1])
    return min(b[0] for b, _ in out), max(b[1] for b, _ in out), any(n[0] for _, n in out)


def _is_float_dtype(dtype) -> bool:
    dt = np.dtype(dtype)
    return dt.kind == "f" or dt.name == "bfloat16"


class TensorStats:
    """Streaming statistics of one tensor. `update()` once per batch; everything else reads the result.

    bins: histogram resolution (TPU-MLIR's ``histogram_bin_num``); see the module docstring for how many bins
    cover ``[0, absmax]``. moments: also keep M3/M4 (skewness, kurtosis); M2 (std) is always kept.
    """

    def __init__(self, bins: int = 2048, *, oversample: int = 2, histogram: bool = True,
                 moments: bool = True, mean_std: bool = True, zeros: bool = True, scratch: _Scratch | None = None):
        if bins < 8 or bins & (bins - 1):
            raise ValueError(f"bins must be a power of two >= 8, got {bins}")
        if oversample < 1 or oversample & (oversample - 1):
            raise ValueError(f"oversample must be a power of two >= 1, got {oversample}")
        self.bins = int(bins)
        self.side = self.bins * int(oversample)   # histogram bins on each side of zero
        self.higher_moments = bool(moments)
        # mean and M2 (std); off, only the count, exact zeros, min, max and histogram are kept (what every method
        # but ACIQ needs), which saves 40 % of the statistics time
        self.mean_std = bool(mean_std) or self.higher_moments
        # exact zeros are counted for the histogram methods, which leave them out; without mean and std, a tensor
        # with no use for a histogram skips them (then only min and max take a pass over its values)
        self.zeros = bool(zeros) or self.mean_std
        self._scratch = scratch
        # exact scalars
        self.count = 0
        self.n_zero = 0
        self.min = math.inf
        self.max = -math.inf
        # moments: mean and central sums
        self.mean = 0.0 if self.mean_std else math.nan
        self.m2 = 0.0
        self.m3 = 0.0
        self.m4 = 0.0
        # histogram
        self.hist = np.zeros(2 * self.side, np.int64)
        self._scale = 0.0            # 1 / bin width, a float32 value (0: no non-zero value seen yet)
        self._unbinned_zeros = 0     # zeros seen before the histogram had a range
        self._collect_moments = True
        self._collect_hist = bool(histogram)

    # ----- collection
    def update(self, x) -> None:
        """Adds one batch. Raises `NonFiniteValues` (state unchanged) if it holds NaN or Inf."""
        flat = _float_view(x)
        if flat.size == 0:
            return
        # float32 data goes to the C kernels when they are available (see tpu_cal.native); float64 data and
        # TPU_CAL_NO_NATIVE=1 take the numpy path, which gives the same results
        lib = native.stats_library() if flat.dtype == np.float32 and self.side <= 1 << 24 else None
        if lib is not None:
            flat = np.ascontiguousarray(flat)
            if self._collect_hist and self._scale > 0 and 32 * self.side <= flat.size < 1 << 31 \
                    and self._update_native_one_pass(lib, flat):
                return
            lo, hi, nan = _minmax_native(lib, flat)
        else:
            lo, hi = flat.min(), flat.max()
            nan = bool(np.isnan(lo) or np.isnan(hi))
        if nan or not (math.isfinite(lo) and math.isfinite(hi)):
            raise NonFiniteValues("NaN" if nan else "Inf", f"a tensor of shape {np.shape(x)}")
        lo, hi = float(lo) + 0.0, float(hi) + 0.0      # + 0.0 turns -0.0 into 0.0 (tables print no "-0")
        absmax = max(-lo, hi)
        do_m, do_h = self._collect_moments, self._collect_hist
        if do_h:
            if absmax > 0:
                self._ensure_range(absmax)
            elif self._scale == 0:          # all zeros and no range yet: bin them once a range exists
                self._unbinned_zeros += flat.size
                do_h = False
            else:                           # all zeros: they all go to the bin [0, w)
                self.hist[self.side] += flat.size
                do_h = False
        if do_m:
            self.min = min(self.min, lo)
            self.max = max(self.max, hi)
        if not (do_m or do_h):
            return
        if flat.size < SPLIT:
            self._accumulate(lib, flat, do_m, do_h)
            return
        # two halves on two threads (the C kernel and numpy's ufuncs release the GIL): the first continues this
        # state, the second fills a fresh one that is then merged in; the cut is a chunk boundary, and the
        # numpy path cuts the same way, so both give the same results whatever the number of cores
        cut = flat.size // (2 * CHUNK) * CHUNK
        other = TensorStats(self.bins, oversample=self.side // self.bins, histogram=do_h,
                            moments=self.higher_moments, mean_std=self.mean_std, zeros=self.zeros)
        other._scale = self._scale
        parallel(lambda job: job[0]._accumulate(lib, job[1], do_m, do_h), [(self, flat[:cut]), (other, flat[cut:])])
        if do_h:
            self.hist += other.hist
        if do_m and self.mean_std:
            self.n_zero += other.n_zero
            self._merge_moments(other.count, other.mean, other.m2, other.m3, other.m4)
        elif do_m:
            self.count += other.count
            self.n_zero += other.n_zero

    @property
    def range_only(self) -> bool:
        """Whether `update` keeps no more than count, min and max (no histogram, moments or zero count), so
        `add_range` can stand for it."""
        return self._collect_moments and not (self._collect_hist or self.mean_std or self.zeros)

    def add_range(self, n: int, lo: float, hi: float, nan: bool) -> None:
        """`update` of a range-only object from a batch's size, min, max and NaN flag measured elsewhere (a kernel's
        `OutputRange`): the same state, and the same NonFiniteValues where the batch holds NaN or Inf."""
        if not self.range_only:
            raise RuntimeError("add_range() needs a range-only TensorStats (no histogram, moments or zeros)")
        if n == 0:
            return
        if nan or not (math.isfinite(lo) and math.isfinite(hi)):
            raise NonFiniteValues("NaN" if nan else "Inf", f"a tensor of {n} values")
        self.min = min(self.min, float(lo) + 0.0)
        self.max = max(self.max, float(hi) + 0.0)
        self.count += int(n)

    def _update_native_one_pass(self, lib, flat: np.ndarray) -> bool:
        """`update` in one pass over memory (tc_update: the bounds taken block by block in cache, with the bins)
        where the histogram's range already covers the batch: the same results as the two passes, halves and
        merges included. False, with nothing changed, where the batch holds a NaN or a value beyond the range:
        then the two-pass way grows the range or reports the value."""
        do_m = self._collect_moments
        moments = self._kernel_moments(do_m)
        if flat.size < SPLIT:
            parts = [(flat, (self.count, self.n_zero), (self.mean, self.m2, self.m3, self.m4), self.hist)]
        else:       # the halves and states of the two-pass way; the histograms are added once both succeeded
            cut = flat.size // (2 * CHUNK) * CHUNK
            parts = [(flat[:cut], (self.count, self.n_zero), (self.mean, self.m2, self.m3, self.m4),
                      np.zeros_like(self.hist)),
                     (flat[cut:], (0, 0), (0.0 if self.mean_std else math.nan, 0.0, 0.0, 0.0), np.zeros_like(self.hist))]
        runs = [((ctypes.c_int64 * 2)(*c), (ctypes.c_double * 4)(*m), (ctypes.c_float * 2)(), [1]) for _, c, m, _ in parts]

        def run(k):
            part, (counts, mom, bounds, rc) = parts[k], runs[k]
            rc[0] = lib.tc_update(part[0].ctypes.data, part[0].size, CHUNK, moments, counts, mom,
                                  part[3].ctypes.data, self.side, self._scale, bounds)

        if len(parts) == 1:
            run(0)
        else:
            parallel(run, [0, 1])
        if any(r[3][0] for r in runs):
            return False
        if do_m:
            lo = min(float(r[2][0]) for r in runs) + 0.0      # + 0.0: no "-0" (as in update)
            hi = max(float(r[2][1]) for r in runs) + 0.0
            self.min = min(self.min, lo)
            self.max = max(self.max, hi)
            if moments > 1:
                counts, mom = runs[0][0], runs[0][1]
                self.count, self.n_zero = counts[0], counts[1]
                self.mean, self.m2, self.m3, self.m4 = mom
                if len(runs) == 2:
                    counts, mom = runs[1][0], runs[1][1]
                    self.n_zero += counts[1]
                    self._merge_moments(counts[0], mom[0], mom[1], mom[2], mom[3])
            else:           # the first part continued the zero count, the second started at 0
                self.count += flat.size
                self.n_zero = sum(r[0][1] for r in runs)
        if len(parts) == 2:
            self.hist += parts[0][3]
            self.hist += parts[1][3]
        return True

    def _kernel_moments(self, do_m: bool) -> int:
        """The C kernels' `moments` argument: 4 or 2 (mean, M2 and up, and the zeros), 1 (the zeros only: KLD and
        Octav leave exact zeros out of the histogram, so they are counted whatever else is kept), 0 (none)."""
        if not do_m:
            return 0
        return (4 if self.higher_moments else 2) if self.mean_std else int(self.zeros)

    def _accumulate(self, lib, flat: np.ndarray, do_m: bool, do_h: bool) -> None:
        """Moments, zeros and histogram bins of `flat` (its range already covered), chunk by chunk."""
        if do_m and not self.mean_std:
            self.count += flat.size
        if lib is not None:
            self._accumulate_native(lib, flat, do_m, do_h)
            return
        sc = self._scratch
        if sc is None or sc.f0.size < min(flat.size, CHUNK):
            sc = self._scratch = _Scratch(max(min(flat.size, CHUNK), 1024))
        scale = np.float32(self._scale)
        side = self.side
        for s in range(0, flat.size, CHUNK):
            c = flat[s:s + CHUNK]
            m = c.size
            if do_m and self.mean_std:
                self._add_moments(c, sc.d0[:m], sc.d1[:m], sc.b0[:m])
            elif do_m and self.zeros:
                np.equal(c, 0, out=sc.b0[:m])
                self.n_zero += int(np.count_nonzero(sc.b0[:m]))
            if do_h:
                f = sc.f0[:m]
                idx = sc.i0[:m]
                np.multiply(c, scale, out=f)
                np.floor(f, out=f)
                np.copyto(idx, f, casting="unsafe")
                idx += side
                counts = np.bincount(idx, minlength=2 * side + 1)
                self.hist += counts[:2 * side]
                self.hist[-1] += counts[2 * side]    # x == R exactly: the last bin is closed

    def _accumulate_native(self, lib, flat: np.ndarray, do_m: bool, do_h: bool) -> None:
        """The C kernel's loop over the chunks: the same sums, merges and bins as the numpy loop in `update`."""
        counts = (ctypes.c_int64 * 2)(self.count, self.n_zero)
        mom = (ctypes.c_double * 4)(self.mean, self.m2, self.m3, self.m4)
        moments = self._kernel_moments(do_m)
        lib.tc_accumulate(flat.ctypes.data, flat.size, CHUNK, moments, counts, mom,
                          self.hist.ctypes.data if do_h else None, self.side, self._scale)
        if moments > 1:
            self.count, self.n_zero = counts[0], counts[1]
            self.mean, self.m2, self.m3, self.m4 = mom
        elif moments:
            self.n_zero = counts[1]

    def _add_moments(self, c: np.ndarray, d: np.ndarray, d2: np.ndarray, z: np.ndarray) -> None:
        m = c.size
        # sums of float64 differences (as the C kernel takes them) about a shift k near the mean (the running
        # mean; for the first chunk the mean of its first 256 values), then corrected exactly to the chunk's
        # own mean, so a large mean does not cancel the variance. (Products and sums, not np.dot: a float64
        # BLAS dot of a chunk wakes OpenBLAS's threads, which on a loaded machine costs 10x the work.)
        k = self.mean if self.count else float(c[:256].mean(dtype=np.float64))
        np.subtract(c, k, out=d, dtype=np.float64)
        s1 = float(d.sum())
        np.multiply(d, d, out=d2)
        s2 = float(d2.sum())
        u = s1 / m                                   # chunk mean = k + u
        cm2 = max(s2 - m * u * u, 0.0)
        if self.higher_moments:
            np.multiply(d2, d, out=d)
            s3 = float(d.sum())
            np.multiply(d2, d2, out=d2)
            s4 = float(d2.sum())
            cm3 = s3 - 3 * u * s2 + 2 * m * u ** 3
            cm4 = s4 - 4 * u * s3 + 6 * u * u * s2 - 3 * m * u ** 4
        else:
            cm3 = cm4 = 0.0
        np.equal(c, 0, out=z)
        self.n_zero += int(np.count_nonzero(z))
        self._merge_moments(m, float(k) + u, cm2, cm3, cm4)

    def _merge_moments(self, nb: int, mb: float, m2b: float, m3b: float, m4b: float) -> None:
        na = self.count
        if na == 0:
            self.count, self.mean, self.m2, self.m3, self.m4 = nb, mb, m2b, m3b, m4b
            return
        n = na + nb
        d = mb - self.mean
        dn = d / n
        m2a, m3a = self.m2, self.m3
        self.m4 += (m4b + d * dn ** 3 * na * nb * (na * na - na * nb + nb * nb)
                    + 6 * dn * dn * (na * na * m2b + nb * nb * m2a) + 4 * dn * (na * m3b - nb * m3a))
        self.m3 += m3b + d * dn * dn * na * nb * (na - nb) + 3 * dn * (na * m2b - nb * m2a)
        self.m2 += m2b + d * dn * na * nb
        self.mean += dn * nb
        self.count = n

    def _ensure_range(self, absmax: float, exact: bool = False) -> None:
        if self._scale == 0:
            # one-pass: the bin width is a power of two, so after any growth it is the smallest power of two
            # covering the final abs-max, whatever the batching (tables do not depend on --batch_size);
            # exact (two-pass): the range is exactly [-absmax, absmax]
            with np.errstate(over="ignore"):      # a denormal abs-max: handled below
                scale = np.float32(self.side / absmax) if exact else \
                    np.float32(2.0 ** -math.ceil(math.log2(absmax / self.side)))
                if not math.isfinite(float(scale)):
                    scale = np.float32(self.side / absmax)
            if float(scale) * absmax > self.side:     # round down so that |x| * scale <= side
                scale = np.nextafter(scale, np.float32(0))
            if not float(scale) > 0:
                raise NonFiniteValues("overflow", f"histogram range (abs-max {absmax})")
            self._scale = float(scale)
            self.hist[self.side] += self._unbinned_zeros
            self._unbinned_zeros = 0
            return
        k = 0
        while absmax * (self._scale / 2 ** k) > self.side:
            k += 1
        if k == 0:
            return
        if not self._scale / 2 ** k > 0:
            raise NonFiniteValues("overflow", f"histogram range (abs-max {absmax})")
        j = np.arange(-self.side, self.side, dtype=np.int64)
        new = np.zeros_like(self.hist)
        np.add.at(new, (j >> k) + self.side, self.hist)
        self.hist = new
        self._scale /= 2 ** k

    def start_histogram_pass(self) -> None:
        """Two-pass mode: called after a first pass over all data (moments, min, max). Fixes the histogram
        range to exactly ``[-absmax, absmax]`` with `bins` bins per side; the next pass over the same data
        only fills the histogram."""
        self.side = self.bins
        self.hist = np.zeros(2 * self.side, np.int64)
        self._scale = 0.0
        self._unbinned_zeros = 0
        if self.count and self.absmax > 0:
            self._ensure_range(self.absmax, exact=True)
        self._collect_moments = False
        self._collect_hist = True

    # ----- results
    @property
    def absmax(self) -> float:
        return max(-self.min, self.max) if self.count else 0.0

    @property
    def has_histogram(self) -> bool:
        return self._scale > 0

    @property
    def width(self) -> float:
        """Bin width of the histogram (0 before any non-zero value)."""
        return 1.0 / self._scale if self._scale else 0.0

    @property
    def var(self) -> float:
        if not self.mean_std:
            return math.nan
        return self.m2 / self.count if self.count else 0.0

    @property
    def std(self) -> float:
        return math.sqrt(self.var)

    @property
    def skewness(self) -> float:
        if not self.higher_moments or self.m2 <= 0:
            return math.nan
        return math.sqrt(self.count) * self.m3 / self.m2 ** 1.5

    @property
    def kurtosis(self) -> float:
        """Non-excess kurtosis E[(x-mean)^4] / var^2 (3 for a Gaussian), as TPU-MLIR's kurtosis analysis
        reports it; inf for a constant tensor."""
        if not self.higher_moments:
            return math.nan
        if self.m2 <= 0:
            return math.inf
        return self.count * self.m4 / (self.m2 * self.m2)

    def edges(self) -> np.ndarray:
        """The ``2*side + 1`` edges of the signed histogram."""
        return np.arange(-self.side, self.side + 1, dtype=np.float64) * self.width

    def signed_histogram(self) -> tuple[np.ndarray, np.ndarray]:
        """(counts, edges) of the signed histogram; exact zeros are in the bin ``[0, w)``."""
        return self.hist.copy(), self.edges()

    def abs_histogram(self, include_zeros: bool = True) -> tuple[np.ndarray, float]:
        """(counts, width): bin k holds ``k*w <= |x| < (k+1)*w``. Without zeros, exact zeros are removed
        from bin 0 (TPU-MLIR's KLD histogram leaves them out)."""
        s = self.side
        counts = self.hist[s:] + self.hist[s - 1::-1]
        if not include_zeros and self.has_histogram:
            counts = counts.copy()
            counts[0] -= min(self.n_zero, counts[0])
        return counts, self.width

    def mean_abs(self) -> float:
        """E|x| from the histogram (bin centres); within w/2 of the exact value."""
        counts, w = self.abs_histogram()
        n = counts.sum()
        if n == 0:
            return 0.0
        centres = (np.arange(counts.size) + 0.5) * w
        counts = counts.astype(np.float64)
        counts[0] -= self.n_zero                       # zeros contribute 0, not w/2
        return float(np.dot(counts, centres) / n)

    def mean_abs_deviation(self) -> float:
        """E|x - mean| from the histogram (bin centres, exact mean); within w/2 of the exact value."""
        if not self.has_histogram:
            return 0.0
        n = self.hist.sum()
        centres = (np.arange(-self.side, self.side) + 0.5) * self.width
        counts = self.hist.astype(np.float64)
        dev = np.abs(centres - self.mean)
        total = float(np.dot(counts, dev))
        # exact zeros sit at 0, not at the centre w/2
        total += self.n_zero * (abs(self.mean) - dev[self.side])
        return total / n

    def _kth(self, c: np.ndarray, k: int) -> float:
        """Estimate of the k-th smallest value (0-based): inside its bin, values are taken as evenly spread."""
        b = min(int(np.searchsorted(c, k + 1, side="left")), c.size - 1)
        below = int(c[b - 1]) if b else 0
        frac = (k - below + 0.5) / max(int(self.hist[b]), 1)
        v = (b - self.side + min(max(frac, 0.0), 1.0)) * self.width
        return min(max(v, self.min), self.max)

    def quantile(self, q: float) -> float:
        """The q-quantile (0..1) of the signed values as np.percentile defines it: linear interpolation between
        the k-th and (k+1)-th smallest values at rank q*(n-1), each estimated from its bin (so within about
        one bin width of the exact value; clamped to [min, max])."""
        if not self.has_histogram:
            return 0.0
        c = np.cumsum(self.hist)
        n = int(c[-1])
        if n == 0:
            return 0.0
        rank = q * (n - 1)
        k = int(math.floor(rank))
        lo = self._kth(c, k)
        hi = self._kth(c, min(k + 1, n - 1))
        return float(lo + (rank - k) * (hi - lo))

    def array_nbytes(self) -> int:
        """Bytes held in arrays by this object (constant for its lifetime: the memory test reads it)."""
        return sum(v.nbytes for v in vars(self).values() if isinstance(v, np.ndarray))

    def summary(self) -> dict:
        return {"count": self.count, "min": self.min, "max": self.max, "absmax": self.absmax,
                "mean": self.mean, "std": self.std, "kurtosis": self.kurtosis, "zeros": self.n_zero}


def inherits_inf(inputs) -> bool:
    """Whether an op's operands (activations or constants) already hold an infinity it may pass on."""
    return any(isinstance(x, np.ndarray) and x.dtype.kind == "f" and bool(np.isinf(x).any()) for x in inputs)


class StatsCollector(Listener):
    """Interpreter listener collecting a `TensorStats` for every floating-point op output (inputs included;
    top.weight and top.none skipped).

    one-pass (default): run every batch once. two_pass=True: run every batch, call `start_histogram_pass()`,
    then run every batch again; the histogram then spans exactly ``[-absmax, absmax]`` with `bins` bins per side.
    NaN or Inf in an activation raises a UserError naming the op and the sample index range of the batch;
    `set_samples(first, count)` tells the collector which samples the next run holds (otherwise it counts them
    from the inputs' batch size, from 0, restarting at each pass).
    """

    # after_op reads an operand only to ask whether it holds an Inf the output holds too; the ops that run in
    # place (relu, clip) cannot make an Inf from finite values, so an operand holding their output answers alike
    after_op_reads_inputs = False

    def __init__(self, bins: int = 2048, *, two_pass: bool = False, moments: bool = True, mean_std: bool = True,
                 oversample: int = 2, names: Iterable[str] | None = None, no_histogram: Iterable[str] = ()):
        self.bins = bins
        self.two_pass = two_pass
        self.moments = moments
        self.mean_std = mean_std
        self.oversample = 1 if two_pass else oversample
        self.only = set(names) if names is not None else None
        # tensors whose thresholds need no histogram (bounded outputs keep their observed range): the rest only
        self.no_histogram = set(no_histogram)
        self.stats: dict[str, TensorStats] = {}
        self.op_types: dict[str, str] = {}
        self.infinite: dict[str, int] = {}      # tensor -> infinities passed on from its operands (masks)
        self._scratch = _Scratch()
        self._pass = 1
        self._next_sample = 0
        self._samples: tuple[int, int] | None = None     # (first, count) of the current run
        self._explicit: tuple[int, int] | None = None

    @property
    def histogram_pass_pending(self) -> bool:
        return self.two_pass and self._pass == 1

    def set_samples(self, first: int, count: int) -> None:
        self._explicit = (int(first), int(count))

    def start_histogram_pass(self) -> None:
        if not self.two_pass:
            raise RuntimeError("start_histogram_pass() needs a collector made with two_pass=True")
        for name, st in self.stats.items():
            if name not in self.no_histogram:
                st.start_histogram_pass()
        self._pass = 2
        self._next_sample = 0

    # ----- listener hooks
    def before_run(self, graph, feeds):
        if self._explicit is not None:
            self._samples, self._explicit = self._explicit, None
        else:
            n = 1
            if graph.inputs:
                first = graph.inputs[0]
                node = next((nd for nd in graph.nodes if nd.name == first), None)
                declared = node.shape[0] if node is not None and node.shape else 1
                x = np.asarray(feeds[first])
                if x.ndim and declared:
                    n = max(x.shape[0] // declared, 1)
            self._samples = (self._next_sample, n)
        self._next_sample = self._samples[0] + self._samples[1]

    def after_op(self, node, inputs, output):
        if node.op in _SKIP_OPS or (self.only is not None and node.name not in self.only):
            return None
        out = np.asarray(output)
        if not _is_float_dtype(out.dtype):
            return None
        if self._pass == 2 and node.name in self.no_histogram:
            return None
        st = self.stats.get(node.name)
        if st is None:
            if self._pass == 2:
                return None              # not seen in the first pass: nothing to histogram against
            st = TensorStats(self.bins, oversample=self.oversample,
                             histogram=not self.two_pass and node.name not in self.no_histogram,
                             zeros=node.name not in self.no_histogram,
                             moments=self.moments, mean_std=self.mean_std, scratch=self._scratch)
            self.stats[node.name] = st
            self.op_types[node.name] = node.op
        sink = node.extra.get(RANGE_KEY)
        measured = sink.total(out.size) if sink is not None and st.range_only else None
        try:
            if measured is not None:        # the kernel measured its output in cache (interp.core.OutputRange)
                st.add_range(out.size, *measured)
            else:
                st.update(out)
        except NonFiniteValues as e:
            if e.kind == "Inf" and inherits_inf(inputs):
                # an attention mask's -inf (where(mask, 0, -inf), then added to the scores) is data, not a
                # fault: the statistics take the finite values, and only an op that creates Inf from finite
                # operands is an error
                finite = out[np.isfinite(out)]         # NaN is reported as such: this is Inf only
                if finite.size:
                    st.update(finite)
                self.infinite[node.name] = self.infinite.get(node.name, 0) + int(out.size - finite.size)
                return None
            first, n = self._samples or (0, 1)
            where = f"sample {first}" if n == 1 else f"samples {first}-{first + n - 1}"
            raise UserError(f"op '{node.name}' ({node.op}) produced {e.kind} on {where}; "
                            f"check the calibration data and the model") from None
        return None
