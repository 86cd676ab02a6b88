"""Streaming statistics: many batches give the statistics of the concatenated data, memory stays constant,
range growth re-bins exactly, NaN/Inf become user errors naming the op and the samples. The tests of the
statistics run on both paths (the C kernel of tpu_cal.native and numpy); the last part checks that the two give
the same results and that the kernel's build and fallback behave."""
import os
import subprocess
import sys

import numpy as np
import pytest

from tpu_cal import native
from tpu_cal.errors import UserError
from tpu_cal.graph import Graph, Node
from tpu_cal import thresholds as thr
from tpu_cal.interp.core import Interpreter
from tpu_cal.stats import NonFiniteValues, StatsCollector, TensorStats

from clitools import require_native


both_paths = pytest.mark.usefixtures("either_path")


def _batches(seed=0):
    """Batches whose range keeps growing (forces several re-binnings), with zeros and a shifted mean."""
    rng = np.random.default_rng(seed)
    out = []
    for k, scale in enumerate([0.01, 0.5, 0.5, 3.0, 1.0, 40.0, 2.0]):
        x = (rng.standard_normal(20_000 + 1_000 * k) * scale + 0.3 * scale).astype(np.float32)
        x[rng.integers(0, x.size, 500)] = 0.0
        out.append(x.reshape(-1, 10))
    return out


def _reference_hist(x, st):
    """Counts of the concatenated data over the streaming object's final edges (independent: np.histogram)."""
    edges = st.edges()
    h, _ = np.histogram(x.astype(np.float64), bins=edges)
    return h


@both_paths
def test_streaming_equals_concatenated():
    batches = _batches()
    st = TensorStats(2048)
    for b in batches:
        st.update(b)
    x = np.concatenate([b.ravel() for b in batches]).astype(np.float64)
    assert st.count == x.size
    assert st.min == x.min() and st.max == x.max()          # exact
    assert st.n_zero == np.count_nonzero(x == 0)
    assert st.absmax == np.abs(x).max()
    assert st.mean == pytest.approx(x.mean(), rel=1e-6, abs=1e-9)
    assert st.std == pytest.approx(x.std(), rel=1e-6)
    z = (x - x.mean()) / x.std()
    assert st.skewness == pytest.approx(np.mean(z ** 3), rel=1e-5, abs=1e-6)
    assert st.kurtosis == pytest.approx(np.mean(z ** 4), rel=1e-5)
    # histogram: same counts as binning everything at once over the final edges; values lying within float32
    # rounding of an edge may differ by one bin
    ref = _reference_hist(x, st)
    assert ref.sum() == st.hist.sum() == x.size
    assert np.abs(ref - st.hist).sum() <= 4
    # after growth the abs-max lies in the upper half of the range: >= bins bins cover [0, absmax]
    assert st.absmax > st.side * st.width / 2
    assert st.absmax / st.width >= 2048


@both_paths
def test_regrowth_is_exact():
    """Re-binning after a growth gives bit-identical counts to binning at the final width from the start."""
    rng = np.random.default_rng(3)
    a = np.float32(0.7)
    A = np.append(rng.uniform(-0.69, 0.69, 50_000).astype(np.float32), [a, -a])
    B = np.append(rng.uniform(-1.7, 1.7, 50_000).astype(np.float32), np.float32(2.5) * a)
    C = np.array([4 * a, -4 * a], np.float32)              # absmax of everything: 4a
    grown = TensorStats(2048)
    for b in (A, B, C):
        grown.update(b)
    direct = TensorStats(2048)
    for b in (C, A, B):
        direct.update(b)
    assert grown.width == direct.width
    np.testing.assert_array_equal(grown.hist, direct.hist)


@both_paths
def test_memory_is_constant():
    st = TensorStats(2048)
    rng = np.random.default_rng(1)
    st.update(rng.standard_normal(1000).astype(np.float32))
    nbytes, shape, attrs = st.array_nbytes(), st.hist.shape, set(vars(st))
    for k in range(60):
        st.update((rng.standard_normal(5000) * (1 + k)).astype(np.float32))
    assert st.array_nbytes() == nbytes == 2 * 2 * 2048 * 8
    assert st.hist.shape == shape and set(vars(st)) == attrs
    # nothing in the object is a container that could grow with the number of batches
    assert not any(isinstance(v, (list, dict, set, tuple)) for v in vars(st).values())


@both_paths
def test_zeros_before_first_nonzero_batch_and_all_zero():
    st = TensorStats(256)
    st.update(np.zeros(100, np.float32))
    assert not st.has_histogram and st.absmax == 0
    st.update(np.array([0.0, 1.0, -2.0], np.float32))
    counts, w = st.abs_histogram()
    assert counts.sum() == 103 and counts[0] == 101 and st.n_zero == 101
    assert st.abs_histogram(include_zeros=False)[0][0] == 0
    st.update(np.zeros((4, 4), np.float32))
    assert st.hist.sum() == 119 and st.n_zero == 117


@both_paths
def test_nan_inf_rejected_without_changing_state():
    st = TensorStats(256)
    st.update(np.arange(10, dtype=np.float32))
    before = (st.count, st.min, st.max, st.mean, st.hist.copy())
    with pytest.raises(NonFiniteValues) as e:
        st.update(np.array([1.0, np.nan], np.float32))
    assert e.value.kind == "NaN"
    with pytest.raises(NonFiniteValues) as e:
        st.update(np.array([1.0, -np.inf], np.float32))
    assert e.value.kind == "Inf"
    assert (st.count, st.min, st.max, st.mean) == before[:4]
    np.testing.assert_array_equal(st.hist, before[4])


@both_paths
def test_quantile_and_deviation_within_a_bin():
    rng = np.random.default_rng(2)
    x = rng.laplace(0.5, 2.0, 400_000).astype(np.float32)
    st = TensorStats(2048)
    for b in np.array_split(x, 7):
        st.update(b)
    xd = x.astype(np.float64)
    for q in (0.0001, 0.01, 0.5, 0.9, 0.9999):
        assert abs(st.quantile(q) - np.percentile(xd, 100 * q)) <= st.width
    assert abs(st.mean_abs_deviation() - np.mean(np.abs(xd - xd.mean()))) <= st.width / 2
    assert abs(st.mean_abs() - np.mean(np.abs(xd))) <= st.width / 2


@both_paths
def test_float16_float64_and_noncontiguous_inputs():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((64, 300))
    for arr in (x.astype(np.float16), x, x.astype(np.float32)[:, ::3]):
        st = TensorStats(512)
        st.update(arr)
        ref = arr.astype(np.float64)
        assert st.count == ref.size and st.min == ref.min() and st.max == ref.max()
        assert st.std == pytest.approx(ref.std(), rel=1e-4)
        assert st.hist.sum() == ref.size


@both_paths
def test_two_pass_histogram_spans_exactly_absmax():
    batches = _batches(5)
    st = TensorStats(2048, oversample=1, histogram=False)
    for b in batches:
        st.update(b)
    assert not st.has_histogram
    moments = (st.count, st.mean, st.m2, st.min, st.max)
    st.start_histogram_pass()
    for b in batches:
        st.update(b)
    assert (st.count, st.mean, st.m2, st.min, st.max) == moments      # second pass only histograms
    counts, w = st.abs_histogram()
    assert counts.size == 2048 and w * 2048 == pytest.approx(st.absmax, rel=1e-6)
    x = np.abs(np.concatenate([b.ravel() for b in batches]).astype(np.float64))
    ref, _ = np.histogram(x, bins=2048, range=(0, 2048 * w))
    assert np.abs(ref - counts).sum() <= 4


# ----------------------------------------------------------------------------- collector on the interpreter
def _graph():
    nodes = [
        Node("top.input", "x", [], {}, (2, 8), "float32"),
        Node("top.weight", "w", [], {"name": "w"}, (8,), "float32"),
        Node("top.add", "a_Add", ["x", "w"], {}, (2, 8), "float32"),
        Node("top.log", "l_Log", ["a_Add"], {}, (2, 8), "float32"),
        Node("top.sigmoid", "s_Sigmoid", ["l_Log"], {}, (2, 8), "float32"),
    ]
    return Graph("g", ["x"], ["s_Sigmoid"], nodes, {"w": np.full(8, 1.0, np.float32)})


@both_paths
def test_collector_streams_every_op_output():
    g = _graph()
    col = StatsCollector(bins=256)
    it = Interpreter(g, [col])
    rng = np.random.default_rng(0)
    data = rng.uniform(0, 3, (5, 8, 8)).astype(np.float32)      # 5 runs of 4 samples (declared batch 2)
    for batch in data:
        it.run({"x": batch})
    assert list(col.stats) == ["x", "a_Add", "l_Log", "s_Sigmoid"]          # weights skipped
    assert col.op_types["s_Sigmoid"] == "top.sigmoid"
    allx = data.reshape(-1, 8)
    st = col.stats["l_Log"]
    ref = np.log(allx + 1.0)
    assert st.count == allx.size
    assert st.min == pytest.approx(ref.min()) and st.max == pytest.approx(ref.max())
    sizes = {name: s.array_nbytes() for name, s in col.stats.items()}
    for batch in data:
        it.run({"x": batch})
    assert {name: s.array_nbytes() for name, s in col.stats.items()} == sizes


@both_paths
@pytest.mark.parametrize("two_pass", [False, True])
def test_collector_skips_histograms_of_bounded_tensors(two_pass):
    """`no_histogram` names (bounded outputs) keep exact count, min and max but no histogram and no zero count;
    the others are as without the option. Every method then gives a bounded tensor its observed range."""
    g = _graph()
    rng = np.random.default_rng(3)
    data = [rng.uniform(0, 3, (8, 8)).astype(np.float32) for _ in range(3)]
    data[1][0, :3] = 0.0                              # exact zeros in x and l_Log: histogram tensors
    cols = [StatsCollector(bins=256, two_pass=two_pass, moments=False, mean_std=False, no_histogram=nh)
            for nh in ((), ("s_Sigmoid",))]
    for col in cols:
        it = Interpreter(g, [col])
        for _ in range(2 if two_pass else 1):
            for x in data:
                it.run({"x": x})
            if col.histogram_pass_pending:
                col.start_histogram_pass()
    full, skip = cols[0].stats, cols[1].stats
    sig = 1 / (1 + np.exp(-np.log(np.concatenate(data).astype(np.float64) + 1.0)))
    st = skip["s_Sigmoid"]
    assert not st.has_histogram and st.count == sig.size
    assert st.min == pytest.approx(sig.min(), rel=1e-6) and st.max == pytest.approx(sig.max(), rel=1e-6)
    for name in ("x", "a_Add", "l_Log"):
        np.testing.assert_array_equal(full[name].hist, skip[name].hist)
        assert full[name].n_zero == skip[name].n_zero
    assert skip["x"].n_zero == skip["l_Log"].n_zero == 3
    for method in thr.METHODS:
        th, lo, hi = thr.table_entry(st, method, bounds=(0.0, 1.0))
        assert (th, lo, hi) == (st.absmax, st.min, st.max), method
        assert thr.table_entry(full["s_Sigmoid"], method, bounds=(0.0, 1.0)) == (th, lo, hi), method


def test_minmax_on_two_threads_finds_nan_and_bounds_in_either_half():
    from tpu_cal import stats as S
    lib = require_native()
    x = np.random.default_rng(4).standard_normal(S.SPLIT + 12345).astype(np.float32)
    x[10] = -9.0
    x[-3] = 11.0
    assert S._minmax_native(lib, x) == (-9.0, 11.0, False)
    x[-7] = np.nan
    lo, hi, nan = S._minmax_native(lib, x)
    assert nan and (lo, hi) == (-9.0, 11.0)
    assert S._minmax_native(lib, x[:100])[:2] == (float(np.nanmin(x[:100])), float(np.nanmax(x[:100])))


@both_paths
def test_collector_names_op_and_samples_on_nan():
    g = _graph()
    col = StatsCollector(bins=256)
    it = Interpreter(g, [col])
    good = np.ones((8, 8), np.float32)
    bad = good.copy()
    bad[3, 0] = -5.0                                  # log(-4) = NaN in the second run: samples 4-7
    it.run({"x": good})
    with np.errstate(invalid="ignore"), pytest.raises(UserError) as e:
        it.run({"x": bad})
    msg = str(e.value)
    assert "l_Log" in msg and "NaN" in msg and "samples 4-7" in msg
    col.set_samples(100, 1)
    with np.errstate(invalid="ignore"), pytest.raises(UserError, match="sample 100[^-]"):
        it.run({"x": bad})


@both_paths
def test_collector_two_pass():
    g = _graph()
    col = StatsCollector(bins=256, two_pass=True)
    it = Interpreter(g, [col])
    rng = np.random.default_rng(1)
    data = [rng.uniform(0, 3, (8, 8)).astype(np.float32) for _ in range(3)]
    for b in data:
        it.run({"x": b})
    assert col.histogram_pass_pending and not col.stats["a_Add"].has_histogram
    col.start_histogram_pass()
    for b in data:
        it.run({"x": b})
    st = col.stats["a_Add"]
    counts, w = st.abs_histogram()
    assert counts.size == 256 and counts.sum() == st.count == 3 * 64
    assert w * 256 == pytest.approx(st.absmax, rel=1e-6)


# ----------------------------------------------------------------------------- C kernel against numpy
def _stats(batches, path, monkeypatch, **kw):
    """TensorStats over `batches` on one path ("native" or "numpy"); kw go to TensorStats."""
    if path == "numpy":
        monkeypatch.setenv("TPU_CAL_NO_NATIVE", "1")
    else:
        monkeypatch.delenv("TPU_CAL_NO_NATIVE", raising=False)
    two_pass = kw.pop("two_pass", False)
    st = TensorStats(**kw, **({"oversample": 1, "histogram": False} if two_pass else {}))
    for b in batches:
        st.update(b)
    if two_pass:
        st.start_histogram_pass()
        for b in batches:
            st.update(b)
    monkeypatch.delenv("TPU_CAL_NO_NATIVE", raising=False)
    return st


def _assert_same(a: TensorStats, b: TensorStats, what=""):
    """Exact: histogram, range, count, zeros, min, max. Moments to 1e-12 (mean relative to the spread)."""
    np.testing.assert_array_equal(a.hist, b.hist, err_msg=what)
    assert (a.width, a.side, a.count, a.n_zero) == (b.width, b.side, b.count, b.n_zero), what
    assert (a.min, a.max) == (b.min, b.max), what
    assert abs(a.mean - b.mean) <= 1e-12 * (abs(b.mean) + b.std) + 1e-300, what
    assert a.m2 == pytest.approx(b.m2, rel=1e-12, abs=1e-300), what
    if b.higher_moments and b.m2 > 0:
        assert a.skewness == pytest.approx(b.skewness, rel=1e-12, abs=1e-12), what
        assert a.kurtosis == pytest.approx(b.kurtosis, rel=1e-12), what
    elif b.higher_moments:
        assert a.kurtosis == b.kurtosis == np.inf


def _random_batches(rng):
    """A few batches of one random kind: sizes around the chunk and vector widths, scales over many decades,
    offsets, zeros, negative zeros, clipped (ReLU6-like) values."""
    n = int(rng.choice([1, 3, 7, 8, 9, 255, 2049, 65535, 65536, 65537, 140_000, 300_001]))
    scale = 10.0 ** rng.uniform(-6, 6)
    out = []
    for _ in range(int(rng.integers(1, 5))):
        x = rng.standard_normal(n) * scale * (1 + 3 * rng.random()) + rng.uniform(-3, 3) * scale
        kind = rng.integers(4)
        if kind == 1:
            x = np.clip(x, 0, 6 * scale)
        elif kind == 2:
            x[rng.random(n) < 0.3] = 0.0
            x[rng.random(n) < 0.1] = -0.0
        elif kind == 3:
            x = np.round(x / scale * 4) * scale / 4          # many repeated values
        out.append(x.astype(np.float32))
    return out


@pytest.mark.parametrize("seed", range(12))
def test_native_matches_numpy_random(seed, monkeypatch):
    require_native()
    rng = np.random.default_rng(100 + seed)
    for trial in range(6):
        batches = _random_batches(rng)
        kw = dict(bins=int(rng.choice([8, 256, 2048])), moments=bool(trial % 3), two_pass=trial == 5)
        a = _stats(batches, "native", monkeypatch, **kw)
        b = _stats(batches, "numpy", monkeypatch, **kw)
        _assert_same(a, b, f"seed {seed} trial {trial} {kw} sizes {[x.size for x in batches]}")


def _edge_batches():
    """Adversarial batches (256 bins, oversample 2: side 512; the first batch fixes the width at 1/512)."""
    side = 512
    edges = np.arange(-side, side + 1, dtype=np.float32) / np.float32(side)      # every edge, -R and R included
    up = np.nextafter(edges, np.float32(np.inf))
    down = np.nextafter(edges, np.float32(-np.inf))
    tiny = np.array([1e-45, -1e-45, 1e-40, -1e-40, 1.1754942e-38, -1.1754942e-38, 0.0, -0.0], np.float32)
    cases = {
        "edges": [edges, up[:-1], down[1:], np.concatenate([edges, -edges, edges[::7]])],
        "x == R and -R": [np.array([1.0, -1.0, 1.0, 1.0, -1.0, 0.5], np.float32), edges[::-1].copy()],
        "negative zeros": [np.array([-0.0] * 9 + [0.0] * 5, np.float32), np.concatenate([edges, -np.zeros(37)])
                           .astype(np.float32)],
        "denormals": [np.concatenate([tiny, edges]), tiny, np.concatenate([tiny] * 50)],
        "denormals only": [tiny[:6], np.concatenate([tiny[:4]] * 33)],
        "huge range": [np.array([3.0e38, -3.4e38, 1e-30, -2.0, 0.0], np.float32),
                       np.concatenate([edges * np.float32(3e38), tiny])],
        "huge then tiny": [np.concatenate([edges * np.float32(1e30), tiny]), edges * np.float32(1e-30)],
        "constant": [np.full(70_001, 3.25, np.float32), np.full(5, 3.25, np.float32)],
        "all zeros first": [np.zeros(100, np.float32), -np.zeros(7, np.float32), edges],
        "large mean": [np.float32(1e4) + edges * np.float32(1e-3), np.float32(1e4) + edges[::3]],
        "float max": [np.array([np.finfo(np.float32).max, -np.finfo(np.float32).max, 0.0], np.float32)],
    }
    # growth over many batches, each value on an edge of the range it arrives in
    growth = [edges * np.float32(2.0 ** k) for k in range(0, 40, 3)]
    cases["growth"] = growth + [np.concatenate(growth)]
    return cases


@pytest.mark.parametrize("case", list(_edge_batches()))
def test_native_matches_numpy_adversarial(case, monkeypatch):
    require_native()
    batches = _edge_batches()[case]
    for kw in (dict(bins=256), dict(bins=256, moments=False), dict(bins=8), dict(bins=256, two_pass=True)):
        a = _stats(batches, "native", monkeypatch, **kw)
        b = _stats(batches, "numpy", monkeypatch, **kw)
        _assert_same(a, b, f"{case} {kw}")


def test_native_matches_numpy_layouts(monkeypatch):
    """Non-contiguous views, reversed strides, float16 (converted exactly), 0-d and empty arrays."""
    require_native()
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((64, 3, 40, 41)) * 2).astype(np.float32)
    views = [x[:, ::2], x.transpose(3, 1, 0, 2), x.reshape(-1)[::-1], x.reshape(-1)[5::3], x[..., 0],
             x.astype(np.float16), np.float32(2.5), np.zeros((0, 4), np.float32), x[:, 1:2, ::-1, 3:]]
    a = _stats(views, "native", monkeypatch, bins=512)
    b = _stats(views, "numpy", monkeypatch, bins=512)
    _assert_same(a, b)
    assert a.count == sum(np.size(v) for v in views)


def test_native_matches_numpy_large_batch(monkeypatch):
    """A batch of millions of values with many in one bin (ReLU6: zeros and the clip value)."""
    require_native()
    rng = np.random.default_rng(9)
    x = np.clip(rng.standard_normal((16, 32, 56, 56)).astype(np.float32) * 3, 0, 6)
    for kw in (dict(bins=2048), dict(bins=2048, moments=False)):
        a = _stats([x, x[:3] * 2], "native", monkeypatch, **kw)
        b = _stats([x, x[:3] * 2], "numpy", monkeypatch, **kw)
        _assert_same(a, b)


def test_two_thread_halves_equal_one_serial_pass(either_path, monkeypatch):
    """A batch of >= stats.SPLIT values runs as two halves on two threads: the same histogram, range and counts as
    one serial pass, the moments to 1e-12, with and without the higher moments."""
    import tpu_cal.stats as S
    rng = np.random.default_rng(12)
    x = (rng.standard_normal(3 * S.SPLIT + 12345) * 2 + 0.5).astype(np.float32)
    batches = [x, np.abs(x[: S.SPLIT + 7]) * 3]
    for moments in (True, False):
        split = TensorStats(2048, moments=moments)
        for bt in batches:
            split.update(bt)
        with monkeypatch.context() as m:
            m.setattr(S, "SPLIT", 1 << 62)
            serial = TensorStats(2048, moments=moments)
            for bt in batches:
                serial.update(bt)
        _assert_same(split, serial)


@pytest.mark.parametrize("path", ["native", "numpy"])
@pytest.mark.parametrize("bad, kind", [
    ([np.nan], "NaN"), ([np.inf], "Inf"), ([-np.inf], "Inf"), ([np.inf, np.nan], "NaN"),
    ([-np.inf, np.inf], "Inf"), ([-np.nan], "NaN")])
def test_non_finite_on_both_paths(path, bad, kind, monkeypatch):
    if path == "native":
        require_native()
    else:
        monkeypatch.setenv("TPU_CAL_NO_NATIVE", "1")
    rng = np.random.default_rng(0)
    st = TensorStats(256)
    st.update(rng.standard_normal(1000).astype(np.float32))
    before = (st.count, st.n_zero, st.min, st.max, st.mean, st.m2, st.m4, st.width, st.hist.copy())
    for n, pos in ((2, 0), (9, 7), (1001, 500), (70_000, 69_998), (70_000, 3)):
        x = rng.standard_normal(n).astype(np.float32)
        x[pos:pos + len(bad)] = bad                    # first, last, middle, in the tail after the vectors
        with pytest.raises(NonFiniteValues) as e:
            st.update(x)
        assert e.value.kind == kind
        after = (st.count, st.n_zero, st.min, st.max, st.mean, st.m2, st.m4, st.width)
        assert after == before[:-1]
        np.testing.assert_array_equal(st.hist, before[-1])


def test_fallback_without_compiler(monkeypatch, tmp_path, capfd):
    """No compiler: one line on stderr, then the numpy path (same results); nothing raises."""
    monkeypatch.setenv("TPU_CAL_CACHE", str(tmp_path))           # no library built before
    monkeypatch.delenv("TPU_CAL_NO_NATIVE", raising=False)        # (this test runs even where it is set)
    monkeypatch.setattr(native, "_lib", None)                      # not tried yet in this process
    monkeypatch.setattr(native, "find_compiler", lambda: str(tmp_path / "nonexistent" / "cc"))
    batches = _batches(3)
    st = TensorStats(256)
    for b in batches:
        st.update(b)
    assert native.stats_library() is None
    assert "nonexistent" in native.unavailable_reason()
    err = capfd.readouterr().err
    assert err.count("native kernels unavailable") == 1 and err.count("\n") == 1, err
    assert not list((tmp_path / "native").iterdir())              # no temporary file left behind
    ref = _stats(batches, "numpy", monkeypatch, bins=256)
    _assert_same(st, ref)
    # no compiler at all
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "find_compiler", lambda: None)
    st2 = TensorStats(256)
    st2.update(batches[0])
    assert "no C compiler" in native.unavailable_reason()
    assert capfd.readouterr().err.count("\n") == 1


def test_build_is_cached_keyed_by_source_and_concurrent_safe(monkeypatch, tmp_path):
    """Processes building at once into an empty cache all load a whole library and leave one file; an edited
    source gets a library of its own."""
    require_native()
    env = dict(os.environ, TPU_CAL_CACHE=str(tmp_path))
    code = ("from tpu_cal import native; import numpy as np, ctypes; lib = native.stats_library(); "
            "b = (ctypes.c_float * 2)(); x = np.array([3, -2, 1], np.float32); "
            "assert lib.tc_minmax(x.ctypes.data, 3, b) == 0 and tuple(b) == (-2, 3)")
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()
        assert p.stderr.read() == ""
    files = sorted(os.listdir(tmp_path / "native"))
    assert len(files) == 1 and files[0].startswith("tpu_cal_native-") and files[0].endswith(".so"), files
    # an edited source builds again, under another name
    edited = tmp_path / "conv_kernel.c"
    edited.write_text(open(native.SOURCES[1]).read() + "\n/* edited */\n")
    monkeypatch.setenv("TPU_CAL_CACHE", str(tmp_path))
    monkeypatch.setattr(native, "SOURCES", (native.SOURCES[0], str(edited)) + native.SOURCES[2:])
    monkeypatch.setattr(native, "_lib", None)
    assert native.stats_library() is not None
    assert len(os.listdir(tmp_path / "native")) == 2


@both_paths
def test_without_mean_and_std_the_histogram_and_range_are_the_same():
    """mean_std=False (every method but ACIQ): histogram, count, exact zeros, min and max exactly as with the
    moments, so KLD (which leaves the zeros out) gives the same threshold; mean and std are NaN, not a made-up
    0. The batches take the two-pass way (70 K values), the one pass of a set range and the two-thread halves
    (1.2 M)."""
    rng = np.random.default_rng(21)
    batches = [np.maximum(rng.standard_normal(n) * 3, 0).astype(np.float32) for n in (1000, 70_000, 1_200_000)]
    batches[1][:5] = -0.0
    full, bare = TensorStats(2048), TensorStats(2048, moments=False, mean_std=False)
    for b in batches:
        full.update(b)
        bare.update(b)
    np.testing.assert_array_equal(full.hist, bare.hist)
    assert (full.count, full.min, full.max, full.width) == (bare.count, bare.min, bare.max, bare.width)
    assert full.count == sum(b.size for b in batches)
    assert bare.n_zero == full.n_zero == sum(int((b == 0).sum()) for b in batches)
    assert thr.kld_threshold(bare) == thr.kld_threshold(full)
    assert np.isnan(bare.mean) and np.isnan(bare.std) and np.isnan(bare.kurtosis)
    assert full.std == pytest.approx(np.concatenate(batches).astype(np.float64).std(), rel=1e-9)
