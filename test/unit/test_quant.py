"""quant.py judged by exact arithmetic: multipliers against the real number they stand for, requantization against
Fraction arithmetic (round half away from zero, saturation), scales against what MLIR itself prints and reads back,
and quantized type text round trips."""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from tpu_cal import ir, quant
from tpu_cal.graph import Graph, Node


def round_half_away(f: Fraction) -> int:
    a = abs(f)
    n = math.floor(a + Fraction(1, 2))
    return n if f >= 0 else -n


def ref_requant(acc: int, m: int, rshift: int, zp: int, lo: int, hi: int) -> int:
    """sat(round_half_away(acc * m / 2**rshift) + zp) in exact rational arithmetic."""
    v = round_half_away(Fraction(acc * m) / Fraction(2) ** rshift) + zp
    return min(max(v, lo), hi)


# ------------------------------------------------------------------------------------------ multiplier_shift
def test_multiplier_shift_relative_error_and_range():
    rng = np.random.default_rng(0)
    real = np.concatenate([10.0 ** rng.uniform(-14, 5, 4000), 2.0 ** np.arange(-40, 20),
                           np.nextafter(2.0 ** np.arange(-30, 10), 0), [1.0, 0.5, 0.999999999, 1e-12]])
    m, sh = quant.multiplier_shift(real)
    assert m.dtype == np.int64 and sh.dtype == np.int64
    assert ((m >= 2 ** 30) & (m < 2 ** 31)).all()
    for r, mi, si in zip(real, m, sh):
        approx = Fraction(int(mi)) / Fraction(2) ** int(si) if si >= 0 else Fraction(int(mi) * 2 ** int(-si))
        rel = abs(approx - Fraction(float(r))) / Fraction(float(r))
        assert rel < Fraction(1, 2 ** 30), (r, mi, si)
    # exact powers of two are exact
    m, sh = quant.multiplier_shift(np.array([0.5, 0.25, 2.0 ** -20]))
    assert list(m) == [2 ** 30] * 3 and list(sh) == [31, 32, 50]


def test_multiplier_shift_of_zero_and_shapes():
    m, sh = quant.multiplier_shift(np.array([[0.0, 0.3], [1e-3, 0.0]]))
    assert m.shape == (2, 2) and m[0, 0] == 0 and m[1, 1] == 0 and m[0, 1] > 0
    m, sh = quant.multiplier_shift(0.3)
    assert m.shape == () and abs(int(m) / 2 ** int(sh) - 0.3) < 0.3 * 2 ** -30


# ------------------------------------------------------------------------------------------------ requantize
@pytest.mark.parametrize("storage,zp", [("i8", 0), ("i8", -7), ("u8", 128), ("i4", 0), ("i16", 3)])
def test_requantize_matches_fraction_arithmetic(storage, zp):
    rng = np.random.default_rng(1)
    q = quant.QType(storage, 0.1, zp)
    acc = np.concatenate([rng.integers(-2 ** 31, 2 ** 31, 300), rng.integers(-5000, 5000, 300),
                          [0, 1, -1, 2 ** 31 - 1, -2 ** 31]]).astype(np.int64)
    for real in (0.37, 1e-3, 2.0 ** -7, 3.0e-6, 1.7e-11, 7.3e-13, 0.999):
        m, sh = quant.multiplier_shift(real)
        got = quant.requantize(acc, m, sh, zp, q)
        assert got.dtype == q.dtype
        ref = [ref_requant(int(a), int(m), int(sh), zp, q.qmin, q.qmax) for a in acc]
        assert got.tolist() == ref, real


def test_requantize_ties_round_half_away_from_zero():
    q = quant.QType("i8", 1.0)
    m, sh = quant.multiplier_shift(0.5)          # acc / 2: every odd acc is a tie
    acc = np.arange(-21, 22, dtype=np.int64)
    got = quant.requantize(acc, m, sh, 0, q)
    assert got.tolist() == [round_half_away(Fraction(int(a), 2)) for a in acc]
    assert quant.requantize(np.array([5, -5, 3, -3]), m, sh, 0, q).tolist() == [3, -3, 2, -2]
    # saturation on both sides, after the zero point
    m, sh = quant.multiplier_shift(0.25)
    assert quant.requantize(np.array([1000, -1000, 506, 510]), m, sh, 0, q).tolist() == [127, -128, 127, 127]
    assert quant.requantize(np.array([-520, -514]), m, sh, 2, q).tolist() == [-128, -127]


def test_requantize_per_channel_and_multipliers_above_one():
    rng = np.random.default_rng(2)
    q = quant.QType("i8", 0.05)
    real = np.array([0.013, 2.7, 1e-5, 0.5, 40.0])
    m, sh = quant.multiplier_shift(real)
    assert sh.min() < 31 - 4      # 40.0 needs a multiplier above 1
    acc = rng.integers(-3000, 3000, (3, 5, 7)).astype(np.int64)
    got = quant.requantize(acc, m, sh, 0, q, axis=1)
    for idx in np.ndindex(acc.shape):
        c = idx[1]
        assert got[idx] == ref_requant(int(acc[idx]), int(m[c]), int(sh[c]), 0, -128, 127)


# ------------------------------------------------------------------------------------------ quantize / types
def test_quantize_round_half_away_and_saturation():
    q = quant.QType("i8", 0.5)
    x = np.array([0.25, -0.25, 0.75, -0.75, 0.2499999, 63.5, 63.75, 64.0, -64.25, 1e9, -1e9], np.float32)
    assert quant.quantize(x, q).tolist() == [1, -1, 2, -2, 0, 127, 127, 127, -128, 127, -128]
    qa = quant.QType("u8", 0.1, 20)
    assert quant.quantize(np.array([-2.0, -2.05, 0.0, 23.5]), qa).tolist() == [0, 0, 20, 255]
    np.testing.assert_array_equal(quant.dequantize(np.array([0, 20, 255], np.uint8), qa),
                                  np.array([-2.0, 0.0, 23.5], np.float32))


def test_exact_scale_has_seven_digits():
    for v in (0.0123456789, 1 / 127, 3.9999999e-8, 12345.678):
        s = quant.exact_scale(v)
        assert float(f"{s:.6e}") == s and abs(s - v) <= abs(v) * 5e-7
    arr = quant.exact_scale(np.array([1 / 3, 2 / 3]))
    assert arr.tolist() == [float("3.333333e-01"), float("6.666667e-01")]


def _module_with_types(types: list[str]) -> str:
    """A module of one input and a tpu.relu per quantized type (parsed and verified by the real MLIR)."""
    nodes = [Node("top.input", "x", [], {}, (1, 4), "float32")]
    for k, t in enumerate(types):
        q = quant.parse_qtype(t)
        nodes.append(Node("tpu.cast", f"c{k}", ["x"], {}, (1, 4), np.dtype(q.dtype).name, {},
                          f"tensor<1x4x{t}>"))
    g = Graph("m", ["x"], ["x"], nodes)
    return g.to_mlir()


def test_exact_scale_is_what_mlir_prints_and_reads():
    rng = np.random.default_rng(3)
    ths = list(10.0 ** rng.uniform(-4, 3, 30)) + [1.0, 127.0, 0.1]
    qs = [quant.symmetric(th) for th in ths] + [quant.symmetric(th, "i4") for th in ths[:5]]
    qs.append(quant.asymmetric(-0.3, 5.1))
    per_axis = quant.QType("i8", quant.exact_scale(10.0 ** rng.uniform(-5, 0, 4)), 0, 1)
    qs.append(per_axis)
    texts = [q.text() for q in qs]
    ctx = ir.context()
    mod = ir.parse(_module_with_types(texts), ctx)
    with ctx:
        g = Graph.from_module(mod)
        printed = ir.asm(mod)
    nodes = g.node_map()
    for k, q in enumerate(qs):
        back = nodes[f"c{k}"].qtype
        assert back.storage == q.storage and back.axis == q.axis
        np.testing.assert_array_equal(np.asarray(back.scale), np.asarray(q.scale))   # bit-identical
        np.testing.assert_array_equal(np.asarray(back.zero_point), np.asarray(q.zero_point))
    # the text MLIR prints back names the same numbers
    for q in qs:
        found = [quant.parse_qtype(seg) for seg in printed.split("tensor<1x4x")[1:]]
        assert any(f is not None and f.storage == q.storage and f.axis == q.axis
                   and np.array_equal(np.asarray(f.scale), np.asarray(q.scale))
                   and np.array_equal(np.asarray(f.zero_point), np.asarray(q.zero_point)) for f in found), q.text()


@pytest.mark.parametrize("q", [
    quant.QType("i8", 0.0235),
    quant.QType("i8", 0.0235, -12),
    quant.QType("u8", 3.5e-5, 200),
    quant.QType("i4", 0.25),
    quant.QType("i32", np.array([1e-4, 2.5e-6, 0.125]), 0, 0),
    quant.QType("i8", np.array([0.1, 0.2]), np.array([0, -3]), 3),
])
def test_parse_qtype_round_trips(q):
    back = quant.parse_qtype(f"tensor<2x3x{q.text()}>")
    assert back.storage == q.storage and back.axis == q.axis and back.expressed == "f32"
    np.testing.assert_array_equal(np.asarray(back.scale), quant.exact_scale(np.asarray(q.scale)))
    np.testing.assert_array_equal(np.asarray(back.zero_point), np.asarray(q.zero_point))
    assert back.text() == q.text()
    assert quant.parse_qtype("tensor<2x3xf32>") is None


def test_per_channel_weight_dequantizes_within_half_a_step():
    rng = np.random.default_rng(4)
    w = rng.standard_normal((6, 3, 3, 3)).astype(np.float32) * np.array([1, 0.1, 10, 0, 1e-3, 2])[:, None, None,
                                                                                                   None]
    ints, q = quant.per_channel_weight(w, 0)
    assert ints.dtype == np.int8 and q.axis == 0 and np.abs(ints).max() == 127
    err = np.abs(quant.dequantize(ints, q) - w)
    assert (err <= np.asarray(q.scale)[:, None, None, None] * (0.5 + 1e-6)).all()
    assert (ints[3] == 0).all() and q.scale[3] == 1.0       # an all-zero channel keeps a usable scale
