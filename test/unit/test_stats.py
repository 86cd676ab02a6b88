"""Streaming statistics: many batches give the statistics of the concatenated data, memory stays constant,
range growth re-bins exactly, NaN/Inf become user errors naming the op and the samples."""
import numpy as np
import pytest

from tpu_cal.errors import UserError
from tpu_cal.graph import Graph, Node
from tpu_cal.interp.core import Interpreter
from tpu_cal.stats import NonFiniteValues, StatsCollector, TensorStats


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
