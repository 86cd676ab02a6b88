"""Threshold methods against independent brute-force references on synthetic distributions."""
import math

import numpy as np
import pytest
from scipy.optimize import minimize_scalar
from scipy.special import erfc

from tpu_cal import thresholds as T
from tpu_cal.errors import UserError
from tpu_cal.stats import TensorStats

N = 200_000


def _data(name, n=N, seed=0):
    rng = np.random.default_rng(seed)
    x = {
        "gauss": lambda: rng.standard_normal(n),
        "laplace": lambda: rng.laplace(0.0, 1.0, n),
        "uniform": lambda: rng.uniform(-1.0, 1.0, n),
        "student_t3": lambda: rng.standard_t(3, n),
        "relu": lambda: np.maximum(rng.standard_normal(n), 0.0),
        "outlier": lambda: np.append(rng.standard_normal(n - 1), 1000.0),
    }[name]()
    return x.astype(np.float32)


def _stats(x, batches=5, **kw):
    st = TensorStats(2048, **kw)
    for b in np.array_split(x, batches):
        st.update(b)
    return st


def _two_pass(x, batches=5):
    st = TensorStats(2048, oversample=1, histogram=False)
    parts = np.array_split(x, batches)
    for b in parts:
        st.update(b)
    st.start_histogram_pass()
    for b in parts:
        st.update(b)
    return st


DISTS = ["gauss", "laplace", "uniform", "student_t3", "relu", "outlier"]


# ----------------------------------------------------------------------------- KLD
def _reference_kld(hist, width, levels=128):
    """The seed's pseudo-code with TPU-MLIR's conventions, as plain loops: P folds the tail into the last
    kept bin; Q spreads each group's count over the group's non-empty bins; log with 1e-30 smoothing."""
    hist = [int(v) for v in hist]
    last = max(i for i, v in enumerate(hist) if v > 0) + 1
    n = (last + levels - 1) // levels * levels
    hist = (hist + [0] * n)[:n]
    total = sum(hist)
    best_kl, best_i = None, None
    for i in range(levels, n + 1, levels):
        p = [hist[j] / total for j in range(i)]
        p[i - 1] += sum(hist[i:]) / total
        kept = sum(hist[:i])
        per = i // levels
        q = [0.0] * i
        for g in range(levels):
            group = hist[g * per:(g + 1) * per]
            filled = sum(1 for v in group if v > 0)
            for j, v in enumerate(group):
                if v > 0:
                    q[g * per + j] = sum(group) / filled / kept
        kl = sum(pj * (math.log10(pj + 1e-30) - math.log10(qj + 1e-30)) for pj, qj in zip(p, q))
        if best_kl is None or kl < best_kl:
            best_kl, best_i = kl, i
    return best_i * width


@pytest.mark.parametrize("dist", DISTS)
def test_kld_equals_loop_reference(dist):
    st = _stats(_data(dist))
    counts, w = st.abs_histogram(include_zeros=False)
    assert T.kld_threshold(st) == pytest.approx(_reference_kld(counts, w), rel=1e-12)


@pytest.mark.parametrize("dist", ["gauss", "laplace", "relu"])
def test_kld_two_pass_matches_tpu_mlir_histogram(dist):
    """Two-pass: the histogram is TPU-MLIR's (2048 bins over [0, absmax], zeros left out), built here
    independently with np.histogram from the raw data."""
    x = _data(dist, seed=7)
    st = _two_pass(x)
    a = np.abs(x[x != 0]).astype(np.float64)
    ref_hist, _ = np.histogram(a, bins=2048, range=(0.0, 2048 * st.width))
    assert T.kld_threshold(st) == pytest.approx(_reference_kld(ref_hist, st.width), rel=1e-12)
    # 16 candidates, i * absmax / 2048
    assert T.kld_threshold(st) / (st.absmax / 16) == pytest.approx(round(T.kld_threshold(st) / (st.absmax / 16)),
                                                                   abs=1e-5)


# ----------------------------------------------------------------------------- Octav / MSE
def _quant_mse(x, s, bits=8, unsigned=False):
    """Brute-force quantization MSE with Octav's grid: 2^bits steps over [-s, s] (or [0, s] unsigned)."""
    step = s / 2 ** bits if unsigned else 2 * s / 2 ** bits
    q = np.clip(np.round(x / step) * step, 0.0 if unsigned else -s, s)
    return float(np.mean((x - q) ** 2))


# not "outlier": with one value at 1000 among N(0,1) data every step is wider than the data, so the true MSE
# is lowest when all real data rounds to 0 (s = absmax); Octav's uniform-noise model does not hold there
@pytest.mark.parametrize("dist", ["gauss", "laplace", "uniform", "student_t3", "relu"])
def test_octav_minimises_brute_force_mse(dist):
    x = _data(dist, seed=1)
    st = _stats(x)
    s = T.octav_threshold(st)
    xd = x.astype(np.float64)
    unsigned = bool(x.min() >= 0)
    grid = np.geomspace(st.absmax * 1e-2, st.absmax, 150)
    best = min(_quant_mse(xd, g, unsigned=unsigned) for g in grid)
    assert _quant_mse(xd, s, unsigned=unsigned) <= best * 1.02


@pytest.mark.parametrize("dist", ["gauss", "laplace", "student_t3", "relu"])
def test_octav_matches_fixed_point_on_raw_data(dist):
    x = _data(dist, seed=2)
    st = _stats(x)
    a = np.abs(x.astype(np.float64))
    a = a[a > 0]
    u = 4.0 if x.min() >= 0 else 1.0
    s = a.mean()
    for _ in range(200):
        s_new = a[a > s].sum() / (4.0 ** -8 / 3 / u * np.count_nonzero(a <= s) + np.count_nonzero(a > s))
        if abs(s_new - s) < 1e-9 * s:
            break
        s = s_new
    assert abs(T.octav_threshold(st) - s) <= 2 * st.width


# ----------------------------------------------------------------------------- percentile, max
@pytest.mark.parametrize("dist", DISTS)
def test_percentile_matches_numpy(dist):
    x = _data(dist, seed=3)
    st = _stats(x)
    xd = x.astype(np.float64)
    lo, hi = np.percentile(xd, [0.01, 99.99])
    plo, phi = T.percentile_range(st)
    assert abs(plo - lo) <= st.width and abs(phi - hi) <= st.width
    assert abs(T.percentile9999_threshold(st) - max(abs(lo), abs(hi))) <= st.width
    th, tlo, thi = T.table_entry(st, "use_percentile9999")
    assert (tlo, thi) == (plo, phi)                 # TPU-MLIR writes the percentiles as min/max


@pytest.mark.parametrize("dist", DISTS)
def test_max_is_absmax(dist):
    x = _data(dist)
    st = _stats(x)
    assert T.compute_threshold(st, "use_max") == float(np.abs(x).max())


# ----------------------------------------------------------------------------- ACIQ
def _gauss_mse(a, bits):
    return (a * a + 1) * erfc(a / math.sqrt(2)) - math.sqrt(2 / math.pi) * a * math.exp(-a * a / 2) \
        + a * a / (3 * 4 ** bits)


def _laplace_mse(a, bits):
    return 2 * math.exp(-a) + a * a / (3 * 4 ** bits)


@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8])
def test_aciq_constants_minimise_closed_form(bits):
    g = minimize_scalar(lambda a: _gauss_mse(a, bits), bounds=(0.5, 10), method="bounded",
                        options={"xatol": 1e-10}).x
    l = minimize_scalar(lambda a: _laplace_mse(a, bits), bounds=(0.5, 30), method="bounded",
                        options={"xatol": 1e-10}).x
    assert T.aciq_alpha(bits, "gauss") == pytest.approx(g, rel=1e-6)
    assert T.aciq_alpha(bits, "laplace") == pytest.approx(l, rel=1e-6)


def test_aciq_constants_match_published_values():
    # ACIQ paper table / TPU-MLIR's constants for 8 and 4 bits
    assert T.aciq_alpha(8, "gauss") == pytest.approx(3.92403337, rel=1e-6)
    assert T.aciq_alpha(4, "gauss") == pytest.approx(2.55913642, rel=1e-6)
    assert T.aciq_alpha(8, "laplace") == pytest.approx(9.89675982, rel=1e-6)
    assert T.aciq_alpha(4, "laplace") == pytest.approx(5.02864014, rel=1e-6)


def test_aciq_on_known_sigma_and_b():
    rng = np.random.default_rng(4)
    sigma, b = 2.0, 0.5
    g = _stats((rng.standard_normal(1_000_000) * sigma).astype(np.float32))
    l = _stats(rng.laplace(0.0, b, 1_000_000).astype(np.float32))
    assert T.compute_threshold(g, "use_aciq_gauss") == pytest.approx(3.92403549 * sigma, rel=0.01)
    assert T.compute_threshold(l, "use_aciq_laplace") == pytest.approx(9.89675977 * b, rel=0.01)
    # ACIQ's own range-based sigma estimate, on request
    const = 0.5 * 0.35 * (1 + math.sqrt(math.pi * math.log(4)))
    est = (g.max - g.min) * const / math.sqrt(2 * math.log(g.count))
    assert T.aciq_gauss_threshold(g, gauss_sigma="range") == pytest.approx(abs(g.mean) + T.aciq_alpha(8, "gauss") * est)


def test_aciq_gauss_alpha_minimises_real_quantization_mse():
    x = np.random.default_rng(5).standard_normal(400_000)
    grid = np.linspace(2.0, 6.0, 161)
    mses = [_quant_mse(x, s) for s in grid]
    assert _quant_mse(x, T.aciq_alpha(8, "gauss")) <= min(mses) * 1.02


# ----------------------------------------------------------------------------- torch HistogramObserver search
def _reference_torch_error(h, bw, start, end, dst_n):
    """torch.ao HistogramObserver._compute_quantization_error, one source bin at a time."""
    dst_w = bw * (end - start + 1) / dst_n
    total = 0.0
    for k, count in enumerate(h):
        b0 = (k - start) * bw
        b1 = b0 + bw
        db = min(max(math.floor(b0 / dst_w), 0), dst_n - 1)
        de = min(max(math.floor(b1 / dst_w), 0), dst_n - 1)
        dens = count / bw
        norm = lambda lo, hi: dens * (hi ** 3 - lo ** 3) / 3  # noqa: E731
        total += norm(b0 - (db + 0.5) * dst_w, dst_w / 2)
        total += (de - db - 1) * norm(-dst_w / 2, dst_w / 2)
        total += norm(-dst_w / 2, b1 - (de + 0.5) * dst_w)
    return total


def _reference_torch_search(h, bw, dst_n):
    """The greedy loop step by step, 1e-5 of probability mass at a time."""
    total = float(sum(h))
    csum = np.cumsum(h)
    step = 1e-5
    alpha, beta = 0.0, 1.0
    start, end = 0, len(h) - 1
    norm_min = math.inf
    ia = ib = 0
    while alpha < beta:
        na, nb = (ia + 1) * step, 1.0 - (ib + 1) * step
        l, r = start, end
        while l < end and csum[l] < na * total:
            l += 1
        while r > start and csum[r] > nb * total:
            r -= 1
        ns, ne = start, end
        if l - start > end - r:
            ns, ia = l, ia + 1
            alpha = ia * step
        else:
            ne, ib = r, ib + 1
            beta = 1.0 - ib * step
        if ns == start and ne == end:
            continue
        norm = _reference_torch_error(h, bw, ns, ne, dst_n)
        if norm > norm_min:
            break
        norm_min = norm
        start, end = ns, ne
    return start, end


@pytest.mark.parametrize("dist", ["gauss", "laplace", "student_t3"])
def test_torch_search_equals_step_by_step_reference(dist):
    x = _data(dist, n=50_000, seed=6).astype(np.float64)
    h, edges = np.histogram(x, bins=192)
    h = h.astype(np.float64)
    bw = float(edges[1] - edges[0])
    for s, e in [(0, 191), (10, 150), (40, 60)]:
        assert T._torch_error(h, bw, s, e, 256) == pytest.approx(_reference_torch_error(h, bw, s, e, 256),
                                                                 rel=1e-9)
    assert T._torch_search(h, bw, 256) == _reference_torch_search(h, bw, 256)


@pytest.mark.parametrize("dist", ["gauss", "laplace", "relu", "student_t3", "uniform"])
def test_torch_observer_close_to_torch(dist):
    torch = pytest.importorskip("torch")
    from torch.ao.quantization import HistogramObserver
    x = _data(dist, seed=8)
    ob = HistogramObserver(bins=2048, dtype=torch.qint8, qscheme=torch.per_tensor_affine)
    ob(torch.from_numpy(x))
    scale, zp = ob.calculate_qparams()
    scale, zp = float(scale), int(zp)
    want = scale * max(zp + 128, 127 - zp)
    st = TensorStats(2048, oversample=1)
    st.update(x)
    th, lo, hi = T.table_entry(st, "use_torch_observer_for_cali")
    assert th == pytest.approx(want, rel=0.01)
    assert lo <= 0 <= hi and max(-lo, hi) == pytest.approx(th)


# ----------------------------------------------------------------------------- degenerate tensors
METHOD_NAMES = list(T.METHODS)


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_degenerate_tensors_get_positive_finite_thresholds(method):
    zero = _stats(np.zeros(1000, np.float32))
    const = _stats(np.full(1000, -2.5, np.float32))
    empty = TensorStats(2048)
    tiny = _stats((np.random.default_rng(0).standard_normal(1000) * 1e-30).astype(np.float32))
    sparse = _stats(np.append(np.zeros(99_999), 3.0).astype(np.float32))
    assert T.compute_threshold(zero, method) == T.ZERO_FALLBACK
    assert T.table_entry(zero, method) == (T.ZERO_FALLBACK, 0.0, T.ZERO_FALLBACK)
    assert T.compute_threshold(empty, method) == T.ZERO_FALLBACK
    assert T.compute_threshold(const, method) == 2.5
    for st in (tiny, sparse):
        th = T.compute_threshold(st, method)
        assert math.isfinite(th) and 0 < th <= st.absmax


@pytest.mark.parametrize("method", METHOD_NAMES)
@pytest.mark.parametrize("dist", DISTS)
def test_every_method_positive_finite_and_within_absmax(method, dist):
    st = _stats(_data(dist, n=20_000))
    th, lo, hi = T.table_entry(st, method)
    assert math.isfinite(th) and 0 < th <= st.absmax
    assert lo <= hi


def test_single_huge_outlier_is_clipped_by_clipping_methods():
    st = _stats(_data("outlier"))
    for m in ("kl", "percentile9999", "aciq_gauss", "aciq_laplace", "torch_observer"):
        assert T.compute_threshold(st, m) < 100
    assert T.compute_threshold(st, "max") == 1000.0


# ----------------------------------------------------------------------------- bounded outputs
def _saturated_sigmoid(n=200_000, seed=0):
    """Mostly tiny sigmoid outputs and 2% saturated near 1: TPU-MLIR-style KLD clips them to ~1/32."""
    rng = np.random.default_rng(seed)
    z = np.where(rng.uniform(size=n) < 0.02, rng.normal(6, 1, n), rng.normal(-6, 1, n))
    return (1 / (1 + np.exp(-z))).astype(np.float32)


def test_bounded_rule_keeps_sigmoid_usable():
    x = _saturated_sigmoid()
    st = _stats(x)
    raw = T.kld_threshold(st)
    assert raw < 0.1                                     # the failure the rule exists for
    assert T.compute_threshold(st, "kl") == pytest.approx(raw)           # unbounded op: untouched
    bounds = T.output_bounds("top.sigmoid")
    th = T.compute_threshold(st, "kl", bounds=bounds)
    # bounded outputs keep their whole observed range: nothing is clipped
    assert th == float(np.abs(x).max()) and np.all(np.abs(x) <= th)
    assert T.compute_threshold(st, "max", bounds=bounds) == st.absmax
    table = T.compute_table({"s": st, "c": st}, "kl", op_types={"s": "top.sigmoid", "c": "top.conv"})
    assert table["s"][0] == th and table["c"][0] == pytest.approx(raw)


def test_output_bounds_table():
    assert T.output_bounds("top.sigmoid") == (0.0, 1.0)
    assert T.output_bounds("top.softmax") == (0.0, 1.0)
    assert T.output_bounds("top.hardsigmoid") == (0.0, 1.0)
    assert T.output_bounds("top.tanh") == (-1.0, 1.0)
    assert T.output_bounds("top.conv") is None


def test_method_spellings():
    for name, want in [("use_kl", "kl"), ("KL", "kl"), ("use_mse", "mse"), ("MSE", "mse"), ("octav", "mse"),
                       ("use_max", "max"), ("Percentile9999", "percentile9999"),
                       ("use_aciq_gauss", "aciq_gauss"), ("use_aciq_laplace", "aciq_laplace"),
                       ("use_torch_observer_for_cali", "torch_observer")]:
        assert T.canonical_method(name) == want
    with pytest.raises(UserError, match="unknown calibration method 'use_magic'"):
        T.canonical_method("use_magic")


def test_histogram_methods_refuse_a_missing_histogram_pass():
    st = TensorStats(2048, oversample=1, histogram=False)       # two-pass mode, second pass not run
    st.update(_data("gauss", n=1000))
    assert T.compute_threshold(st, "max") == st.absmax
    assert math.isfinite(T.compute_threshold(st, "aciq_gauss"))
    with pytest.raises(RuntimeError, match="histogram pass"):
        T.compute_threshold(st, "kl")


def test_aciq_reaches_around_a_nonzero_mean():
    # a shifted Gaussian: the symmetric threshold must cover mean + alpha * sigma, not alpha * sigma alone
    rng = np.random.default_rng(6)
    mu, sigma = 3.0, 0.5
    st = _stats((mu + rng.standard_normal(500_000) * sigma).astype(np.float32))
    th = T.compute_threshold(st, "use_aciq_gauss")
    assert th == pytest.approx(min(mu + 3.92403549 * sigma, st.absmax), rel=0.01)


def test_clip_outputs_keep_their_range():
    rng = np.random.default_rng(7)
    x = np.concatenate([np.abs(rng.standard_normal(199_900)) * 0.5, rng.uniform(0, 6, 100)]).astype(np.float32)
    st = _stats(x)
    assert T.compute_threshold(st, "percentile9999") < 0.95 * float(x.max())   # the method cuts the sparse tail
    bounded = T.compute_threshold(st, "percentile9999", bounds=T.output_bounds("top.clip"))
    assert bounded == pytest.approx(float(x.max()))
