"""The C kernels of tpu_cal.native against numpy references, bit for bit, and the portable build (128-bit vectors)
against the one tuned to this CPU (-march=native): both must give the same bits."""
from __future__ import annotations

import ctypes

import numpy as np
import pytest

from tpu_cal import native

from clitools import require_native


@pytest.fixture(scope="module")
def builds():
    """{"default": the library stats_library() loads, "portable": the portable build} (the same file where the
    CPU's features are unknown or the compiler rejects -march=native)."""
    lib = require_native()
    return {"default": lib, "portable": native.declare(ctypes.CDLL(native._build(tuned=False)))}


def _dw_ref(x, w, b, k, s, d, p, OH, OW):
    """Depthwise conv in float32 as the kernel defines it: from +0, tap by tap in row-major order, only the taps
    that lie inside the plane, then the bias."""
    N, C, H, W = x.shape
    y = np.zeros((N, C, OH, OW), np.float32)
    oh, ow = np.arange(OH), np.arange(OW)
    for i in range(k[0]):
        ih = oh * s[0] + i * d[0] - p[0]
        rv = (ih >= 0) & (ih < H)
        for j in range(k[1]):
            iw = ow * s[1] + j * d[1] - p[1]
            cv = (iw >= 0) & (iw < W)
            if not rv.any() or not cv.any():
                continue
            xs = x[:, :, ih[rv]][:, :, :, iw[cv]]
            blk = y[:, :, rv][:, :, :, cv]
            with np.errstate(invalid="ignore"):         # Inf * 0, Inf - Inf: NaN, as in the kernel
                blk += w[None, :, i, j, None, None] * xs
            y[np.ix_(range(N), range(C), np.flatnonzero(rv), np.flatnonzero(cv))] = blk
    if b is not None:
        y += b[None, :, None, None]
    return y


def _dw_cases(n=120, seed=5):
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        t = len(out)
        N, C = int(rng.integers(1, 3)), int(rng.integers(1, 4))
        H, W = int(rng.integers(1, 30)), int(rng.integers(1, 70))
        k = [int(v) for v in rng.integers(1, 6, 2)]
        s = [int(v) for v in rng.integers(1, 4, 2)]
        d = [int(v) for v in rng.integers(1, 3, 2)]
        p = [int(v) for v in rng.integers(0, 4, 4)]        # top, left, bottom, right
        OH = (H + p[0] + p[2] - (k[0] - 1) * d[0] - 1) // s[0] + 1
        OW = (W + p[1] + p[3] - (k[1] - 1) * d[1] - 1) // s[1] + 1
        if OH <= 0 or OW <= 0:
            continue
        x = rng.standard_normal((N, C, H, W), dtype=np.float32)
        if t % 3 == 0:                       # exact zeros of both signs (ReLU outputs, -0 products)
            x[x < 0.2] = 0
            x[x > 1.5] = -0.0
        if t % 5 == 0:
            x.flat[int(rng.integers(x.size))] = np.nan
        if t % 7 == 0:
            x.flat[int(rng.integers(x.size))] = -np.inf
        w = rng.standard_normal((C, *k), dtype=np.float32)
        if t % 4 == 0:
            w[w > 0.4] = 0
        if t % 11 == 0:                      # a non-finite weight: Inf * padding would be NaN, the plain loop runs
            w[0, 0, 0] = np.inf
        if t % 13 == 0:
            w[-1, -1, -1] = np.nan
        b = rng.standard_normal(C, dtype=np.float32) if t % 2 else None
        out.append((x, w, b, k, s, d, p, OH, OW))
    return out


def _run_dw(lib, x, w, b, k, s, d, p, OH, OW, planes=None):
    N, C, H, W = x.shape
    y = np.full((N, C, OH, OW), 7.0, np.float32)       # every output must be written
    r = planes or [(0, N * C)]
    for r0, r1 in r:
        lib.tc_dwconv2d(x.ctypes.data, w.ctypes.data, None if b is None else b.ctypes.data, y.ctypes.data, r0, r1,
                        C, H, W, k[0], k[1], s[0], s[1], d[0], d[1], p[0], p[1], OH, OW)
    return y


def test_depthwise_kernel_bit_exact(builds):
    """Odd shapes, strides 1-3, dilations, asymmetric pads, NaN / Inf / signed zeros in x, non-finite weights:
    every build gives the reference's bits."""
    for case in _dw_cases():
        ref = _dw_ref(*case).view(np.uint32)
        for name, lib in builds.items():
            got = _run_dw(lib, *case).view(np.uint32)
            assert np.array_equal(got, ref), (name, case[0].shape, case[3:])


def test_depthwise_kernel_plane_ranges(builds):
    """Planes [r0, r1) per call (how the interpreter spreads them over threads) give the same output."""
    x, w, b, k, s, d, p, OH, OW = _dw_cases(4, seed=9)[3]
    N, C = x.shape[:2]
    whole = _run_dw(builds["default"], x, w, b, k, s, d, p, OH, OW)
    cuts = [(i, i + 1) for i in range(N * C)]
    np.testing.assert_array_equal(_run_dw(builds["default"], x, w, b, k, s, d, p, OH, OW, cuts).view(np.uint32),
                                  whole.view(np.uint32))


@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 1000, 100_003])
def test_clip_range_is_np_clip_with_its_range(builds, n):
    """tc_clip_range: np.clip's bits in place (NaN stays, -0 stays, Inf clipped), and min/max ignoring NaN with
    the NaN flag, as tc_minmax gives them for the clipped values; on every build."""
    rng = np.random.default_rng(n)
    x = (rng.standard_normal(n) * 4).astype(np.float32)
    special = np.array([-0.0, 0.0, 6.0, np.float32(6.0000005), -np.inf, np.inf, np.nan, 5.9999995], np.float32)
    if n >= 16:
        x[rng.integers(0, n, 8)] = special
    for nan_free in (True, False):
        xs = x.copy()
        if nan_free:
            xs[np.isnan(xs)] = 1.0
        want = np.clip(xs, np.float32(0), np.float32(6))
        for name, lib in builds.items():
            y = xs.copy()
            b = (ctypes.c_float * 2)()
            nan = lib.tc_clip_range(y.ctypes.data, n, 0.0, 6.0, b)
            assert np.array_equal(y.view(np.uint32), want.view(np.uint32)), name
            assert bool(nan) == bool(np.isnan(want).any()), name
            if n == 0:
                assert (b[0], b[1]) == (np.inf, -np.inf)
            elif not np.isnan(want).all():
                assert (b[0], b[1]) == (np.nanmin(want), np.nanmax(want)), name


def test_builds_agree_on_statistics(builds):
    """tc_minmax and tc_accumulate: the same bounds, histogram, zero count and moments on both builds."""
    rng = np.random.default_rng(3)
    for n in (1, 7, 1000, 70_001, 300_003):
        x = (rng.standard_normal(n) * 3).astype(np.float32)
        x[::5] = 0
        res = {}
        for name, lib in builds.items():
            b = (ctypes.c_float * 2)()
            nan = lib.tc_minmax(x.ctypes.data, n, b)
            cnt = (ctypes.c_int64 * 2)()
            mom = (ctypes.c_double * 4)()
            hist = np.zeros(2 * 512, np.int64)
            lib.tc_accumulate(x.ctypes.data, n, 1 << 16, 4, cnt, mom, hist.ctypes.data, 512, 16.0)
            res[name] = (nan, tuple(b), tuple(cnt), tuple(mom), hist.tolist())
        assert res["default"] == res["portable"], n


def _stats_run(batches, numpy_path, monkeypatch, **kw):
    from tpu_cal.stats import NonFiniteValues, TensorStats
    if numpy_path:
        monkeypatch.setenv("TPU_CAL_NO_NATIVE", "1")
    else:
        monkeypatch.delenv("TPU_CAL_NO_NATIVE", raising=False)
    st, log = TensorStats(256, **kw), []
    for b in batches:
        before = (st.hist.copy(), st.count, st.n_zero, st.min, st.max, st.mean, st.m2, st.width)
        try:
            st.update(b)
            log.append("ok")
        except NonFiniteValues as e:
            log.append(e.kind)
            after = (st.hist, st.count, st.n_zero, st.min, st.max, st.mean, st.m2, st.width)
            np.testing.assert_array_equal(after[0], before[0])
            assert after[1:] == before[1:] or np.isnan(st.mean)      # state unchanged (mean NaN: not kept)
    monkeypatch.delenv("TPU_CAL_NO_NATIVE", raising=False)
    return st, log


@pytest.mark.parametrize("kw", [dict(moments=False, mean_std=False), dict(moments=False), dict(moments=True)])
def test_one_pass_update_matches_numpy(monkeypatch, kw):
    """TensorStats.update's one-pass native way (range already set, batches of at least 32 values a bin; halves on
    two threads from 1 Mi values) against the numpy path: in range, beyond it (the range grows), NaN and Inf
    (reported, state unchanged), all zeros, signed zeros, a value exactly at the range's end."""
    require_native()
    rng = np.random.default_rng(17)
    g = lambda n, s=1.0: (rng.standard_normal(n) * s).astype(np.float32)
    big = g(1_300_000)
    nan = g(40_000)
    nan[12_345] = np.nan
    inf = g(40_000)
    inf[-1] = -np.inf
    edge = g(40_000, 0.1)
    zeros = np.zeros(50_000, np.float32)
    zeros[::2] = -0.0
    batches = [g(1000, 3), g(40_000), g(40_000, 9), big, big * 7, nan, inf, zeros, edge, g(2_500_001, 0.5)]
    edge[7] = 64.0       # the range after the batches above is a power of two: 64 is exactly at its end
    a, la = _stats_run(batches, False, monkeypatch, **kw)
    b, lb = _stats_run(batches, True, monkeypatch, **kw)
    assert la == lb == ["ok"] * 5 + ["NaN", "Inf"] + ["ok"] * 3
    np.testing.assert_array_equal(a.hist, b.hist)
    assert (a.count, a.n_zero, a.min, a.max, a.width) == (b.count, b.n_zero, b.min, b.max, b.width)
    if kw.get("mean_std", True):
        assert a.mean == pytest.approx(b.mean, rel=1e-12, abs=1e-15)
        assert a.m2 == pytest.approx(b.m2, rel=1e-12)
    if kw.get("moments"):
        assert a.m3 == pytest.approx(b.m3, rel=1e-9, abs=1e-6)
        assert a.m4 == pytest.approx(b.m4, rel=1e-12)


# ----------------------------------------------------------------------------------------------- elementwise kernels
def _hardswish_case():
    """Inputs with the special values first, and hardswish as the kernel defines it, in numpy."""
    rng = np.random.default_rng(5)
    x = (rng.standard_normal(300_001) * 4).astype(np.float32)
    x[:8] = [np.nan, np.inf, -np.inf, -3.0, 3.0, 0.0, -0.0, 1e-38]
    with np.errstate(invalid="ignore"):                 # Inf * 0
        return x, x * np.clip(x / np.float32(6) + np.float32(0.5), 0, 1)


def test_hardswish_kernel_matches_numpy(either_path):
    from tpu_cal.interp.kernels.elementwise import _hardswish
    x, ref = _hardswish_case()
    with np.errstate(invalid="ignore"):
        got = _hardswish(x)
    np.testing.assert_array_equal(got.view(np.uint32)[8:], ref.view(np.uint32)[8:])
    np.testing.assert_array_equal(got, ref)             # NaN where numpy has NaN


def test_hardswish_kernel_every_build(builds):
    x, ref = _hardswish_case()
    for name, lib in builds.items():                    # every build: the same bits
        out = np.empty_like(x)
        lib.tc_hardswish(x.ctypes.data, out.ctypes.data, x.size)
        np.testing.assert_array_equal(out, ref, err_msg=name)


@pytest.mark.parametrize("b_shape", [(2, 5, 40, 40), (2, 5, 1, 1), (1,), (), (2, 1, 1, 1), (5, 1, 1)])
def test_table_lookups_match_numpy(either_path, b_shape):
    from tpu_cal.interp.kernels.tpu import _lookup, _lookup2
    rng = np.random.default_rng(6)
    a = rng.integers(-128, 128, (2, 5, 40, 40)).astype(np.int8)
    b = rng.integers(-128, 128, b_shape).astype(np.int8)
    t2 = rng.integers(-128, 128, 65536).astype(np.int8)
    ref = t2.reshape(256, 256)[a.view(np.uint8)[...], np.broadcast_to(b.view(np.uint8), a.shape)]
    for x, y in ((a, b), (b, a)):                       # the broadcast operand on either side
        want = ref if x is a else t2.reshape(256, 256)[np.broadcast_to(b.view(np.uint8), a.shape), a.view(np.uint8)]
        np.testing.assert_array_equal(_lookup2(t2, x, y), want)
    t1 = rng.integers(0, 256, 256).astype(np.uint8)
    np.testing.assert_array_equal(_lookup(t1, a), t1[a.view(np.uint8)])
