"""The tpu kernels (quantized interpreter) against independent references.

Integer conv / deconv / matmul are checked bit for bit against plain loops and np.einsum on int64 followed by the
requantization in exact integer / Fraction arithmetic (round half away from zero, then saturation), with the
multiplier and shift the contract defines (`quant.multiplier_shift(s_in * s_w[c] / s_out)`). Table-driven int8
ops must equal dequantize -> float kernel -> quantize exactly; f16/bf16 rounding is compared with bit-level
references; data movement on int8 must be exact. The end-to-end tests lower the bundled PP-OCR classifier and
simulate it on the bundled samples.
"""
from __future__ import annotations

import glob
import math
import os
import zlib
from fractions import Fraction

import numpy as np
import pytest

from tpu_cal import ir, quant
from tpu_cal.errors import UserError
from tpu_cal.graph import Graph, Node
from tpu_cal.interp.core import KERNELS, Interpreter, _load_kernels
from tpu_cal.ops import TPU_OPS

_load_kernels()
from tpu_cal.interp.kernels import tpu as tpuk  # noqa: E402  (after the table is loaded)
from clitools import run_cli

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
SAMPLES = os.path.join(ROOT, "examples", "ppocr_cls", "images")


# ----------------------------------------------------------------------------------------------- references
# a 3x3 stride-2 pool with padding, used by the int8 pooling tests
POOL_3X3_S2 = {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "dilations": [1, 1],
               "ceil_mode": False, "count_include_pad": False}


def round_half_away(f: Fraction) -> int:
    n = math.floor(abs(f) + Fraction(1, 2))
    return n if f >= 0 else -n


def ref_requant(acc: np.ndarray, real: np.ndarray, axis: int | None, q: quant.QType) -> np.ndarray:
    """sat(round_half_away(acc * M / 2**shift) + zp) per element, in exact integer arithmetic."""
    m, sh = quant.multiplier_shift(np.asarray(real, np.float64))
    m, sh = np.atleast_1d(m), np.atleast_1d(sh)
    out = np.empty(acc.shape, np.int64)
    for idx in np.ndindex(acc.shape):
        c = 0 if axis is None or m.size == 1 else idx[axis]
        v = round_half_away(Fraction(int(acc[idx]) * int(m[c])) / Fraction(2) ** int(sh[c]))
        out[idx] = min(max(v + int(q.zero_point), q.qmin), q.qmax)
    return out.astype(q.dtype)


def ref_conv(x, w, b, strides, pads, dil, group):
    """Integer NCHW convolution by loops over output positions (x already minus its zero point)."""
    N, C, H, W = x.shape
    Co, Cg, kh, kw = w.shape
    pt, pl, pb, pr = pads
    xp = np.zeros((N, C, H + pt + pb, W + pl + pr), np.int64)
    xp[:, :, pt:pt + H, pl:pl + W] = x
    OH = (H + pt + pb - (kh - 1) * dil[0] - 1) // strides[0] + 1
    OW = (W + pl + pr - (kw - 1) * dil[1] - 1) // strides[1] + 1
    out = np.zeros((N, Co, OH, OW), np.int64)
    Cog = Co // group
    for oh in range(OH):
        for ow in range(OW):
            h0, w0 = oh * strides[0], ow * strides[1]
            patch = xp[:, :, h0:h0 + (kh - 1) * dil[0] + 1:dil[0], w0:w0 + (kw - 1) * dil[1] + 1:dil[1]]
            for g in range(group):
                out[:, g * Cog:(g + 1) * Cog, oh, ow] = np.einsum(
                    "nckl,ockl->no", patch[:, g * Cg:(g + 1) * Cg], w[g * Cog:(g + 1) * Cog].astype(np.int64))
    if b is not None:
        out += np.asarray(b, np.int64)[None, :, None, None]
    return out


def ref_deconv(x, w, b, strides, pads, dil, group, out_pad):
    """Integer ConvTranspose by scattering every input pixel (filter [Cin, Cout/group, kh, kw])."""
    N, C, H, W = x.shape
    _, Cog, kh, kw = w.shape
    Cg = C // group
    FH = strides[0] * (H - 1) + (kh - 1) * dil[0] + 1 + out_pad[0]
    FW = strides[1] * (W - 1) + (kw - 1) * dil[1] + 1 + out_pad[1]
    acc = np.zeros((N, Cog * group, FH, FW), np.int64)
    for ci in range(C):
        g = ci // Cg
        for h in range(H):
            for v in range(W):
                for i in range(kh):
                    for j in range(kw):
                        acc[:, g * Cog:(g + 1) * Cog, h * strides[0] + i * dil[0], v * strides[1] + j * dil[1]] += \
                            x[:, ci, h, v, None].astype(np.int64) * w[ci, :, i, j].astype(np.int64)[None, :]
    acc = acc[:, :, pads[0]:FH - pads[2], pads[1]:FW - pads[3]]
    if b is not None:
        acc = acc + np.asarray(b, np.int64)[None, :, None, None]
    return acc


def bf16_bits_ref(bits: int) -> int | None:
    """float32 bit pattern -> bf16-rounded float32 bit pattern (round to nearest, ties to even); None for NaN."""
    if (bits >> 23) & 0xFF == 0xFF and bits & 0x7FFFFF:
        return None
    upper, lower = bits >> 16, bits & 0xFFFF
    if lower > 0x8000 or (lower == 0x8000 and upper & 1):
        upper += 1
    return (upper << 16) & 0xFFFFFFFF


_F16_VALUES = None


def f16_ref(v: float) -> float:
    """Nearest float16 of a float32 value by exact comparison with every finite float16 (ties to even mantissa;
    beyond the largest finite value by half an ulp or more: inf)."""
    global _F16_VALUES
    if _F16_VALUES is None:
        allv = np.arange(0, 0x7C00, dtype=np.uint16).view(np.float16).astype(np.float64)   # +0 .. max finite
        _F16_VALUES = allv
    if math.isnan(v):
        return v
    a = abs(v)
    sign = -1.0 if math.copysign(1.0, v) < 0 else 1.0
    if a >= 65520.0:
        return sign * math.inf
    vals = _F16_VALUES
    k = int(np.searchsorted(vals, a))
    if k < len(vals) and vals[k] == a:
        return sign * a
    lo, hi = vals[k - 1], vals[k] if k < len(vals) else 65536.0
    d_lo, d_hi = Fraction(a) - Fraction(lo), Fraction(hi) - Fraction(a)
    if d_lo < d_hi:
        return sign * lo
    if d_hi < d_lo:
        return sign * hi
    even_lo = (k - 1) % 2 == 0          # bit patterns are consecutive: the index parity is the mantissa's
    return sign * (lo if even_lo else hi)


# ----------------------------------------------------------------------------------------------- graph builder
def ttype(shape, elem: str) -> str:
    dims = "".join(f"{int(d)}x" for d in shape)
    return f"tensor<{dims}{elem}>"


class Builder:
    """Hand-built lowered graphs: quantized inputs may be fed directly as int8 storage."""

    def __init__(self):
        self.nodes: list[Node] = []
        self.weights: dict[str, np.ndarray] = {}
        self.inputs: list[str] = []

    def _typed(self, node: Node, shape, q=None, elem="f32", dtype="float32"):
        node.shape = tuple(shape)
        if q is not None:
            node.dtype, node.result_type = np.dtype(q.dtype).name, ttype(shape, q.text())
        elif elem in ("f16", "bf16"):
            node.dtype, node.result_type = "float32", ttype(shape, elem)
        else:
            node.dtype, node.result_type = dtype, None
        self.nodes.append(node)
        return node.name

    def input(self, name, shape, q=None, elem="f32", dtype="float32"):
        self.inputs.append(name)
        return self._typed(Node("top.input", name, [], {}), shape, q, elem, dtype)

    def weight(self, name, arr, q=None, elem="f32"):
        arr = np.asarray(arr)
        self.weights[name] = arr
        return self._typed(Node("top.weight", name, [], {"name": name}), arr.shape, q, elem, arr.dtype.name)

    def op(self, op, name, inputs, shape, q=None, prec="INT8", attrs=None, elem="f32", dtype="float32"):
        extra = {} if prec is None else {"precision": prec}
        return self._typed(Node("tpu." + op, name, list(inputs), dict(attrs or {}), (), "float32", extra),
                           shape, q, elem, dtype)

    def graph(self, outputs) -> Graph:
        return Graph("t", list(self.inputs), list(outputs), self.nodes, dict(self.weights), {"state": "lowered"})

    def run(self, feeds, outputs):
        g = self.graph(outputs)
        return Interpreter(g).run(feeds, keep=outputs)


def conv_attrs(k, strides=(1, 1), pads=(0, 0, 0, 0), dil=(1, 1), group=1):
    return {"kernel_shape": list(k), "strides": list(strides), "pads": list(pads), "dilations": list(dil),
            "group": group}


def rng(seed=0):
    return np.random.default_rng(seed)


def rand_scales(r, n, lo=1e-3, hi=5e-2):
    return quant.exact_scale(10.0 ** r.uniform(math.log10(lo), math.log10(hi), n))


# --------------------------------------------------------------------------------------------- registration
def test_every_tpu_op_goes_through_the_dispatcher():
    for d in TPU_OPS:
        assert KERNELS[f"tpu.{d.name}"] is tpuk.TPU_KERNEL, d.name
    assert "tpu.cast" in KERNELS and all(not isinstance(KERNELS[k], tpuk.TpuKernel)
                                         for k in KERNELS if k.startswith("top."))
    node = Node("tpu.relu", "r", ["x"], {}, (2,), "float32", {"precision": "F32"})
    with pytest.raises(RuntimeError, match="Interpreter"):
        KERNELS["tpu.relu"](node, np.zeros(2, np.float32), shape=(2,))


def test_missing_precision_is_a_user_error():
    b = Builder()
    b.input("x", (1, 4))
    b.op("relu", "r", ["x"], (1, 4), prec=None)
    with pytest.raises(UserError, match="'r'.*no precision"):
        b.run({"x": np.zeros((1, 4), np.float32)}, ["r"])


# ----------------------------------------------------------------------------------------------- int8 conv
CONV_CASES = {
    # name: (N, C, Co, H, W, k, strides, pads, dil, group, bias, x zero point)
    "plain_3x3_bias": (2, 4, 6, 7, 6, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, True, 0),
    "groups_stride_asym_pads": (2, 4, 6, 9, 8, (3, 2), (2, 2), (0, 1, 2, 1), (1, 1), 2, True, 0),
    "depthwise_dilation": (2, 5, 5, 11, 10, (3, 3), (2, 1), (2, 2, 1, 2), (2, 2), 5, True, 0),
    "depthwise_wide": (1, 3, 3, 40, 40, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 3, True, 0),
    "pointwise_no_bias": (3, 8, 4, 5, 5, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1, False, 0),
    "pointwise_stride2": (2, 6, 3, 7, 7, (1, 1), (2, 2), (0, 0, 0, 0), (1, 1), 1, True, 0),
    "asymmetric_input": (2, 3, 4, 6, 6, (3, 3), (1, 1), (1, 2, 1, 0), (1, 1), 1, True, -9),
    "channel_multiplier": (1, 2, 6, 6, 5, (2, 2), (1, 2), (1, 0, 0, 1), (1, 1), 2, True, 0),
}


def _run_int_conv(case, r, s_in=None, s_w=None, s_out=None, x=None, w=None, bias_vals=None, out_storage="i8",
                  out_zp=0, in_storage="i8", extra=None):
    N, C, Co, H, W, k, st, pads, dil, group, has_bias, zx = case
    q_in = quant.QType(in_storage, s_in if s_in is not None else quant.exact_scale(r.uniform(0.01, 0.05)), zx)
    if x is None:
        x = r.integers(q_in.qmin, q_in.qmax + 1, (N, C, H, W)).astype(q_in.dtype)
    if w is None:
        w = r.integers(-127, 128, (Co, C // group) + tuple(k)).astype(np.int8)
    s_w = s_w if s_w is not None else rand_scales(r, Co)
    q_w = quant.QType("i8", s_w, 0, 0)
    bias = None
    if has_bias:
        bias = bias_vals if bias_vals is not None else r.integers(-2 ** 12, 2 ** 12, Co).astype(np.int32)
    ref = ref_conv(x.astype(np.int64) - zx, w, bias, st, pads, dil, group)
    OH, OW = ref.shape[2:]
    s_out = s_out if s_out is not None else quant.exact_scale(
        float(np.abs(ref * (q_in.scale * s_w)[None, :, None, None]).max()) / 127 * r.uniform(0.5, 1.0))
    q_out = quant.QType(out_storage, s_out, out_zp)
    b = Builder()
    b.input("x", x.shape, q_in)
    b.weight("w", w, q_w)
    ins = ["x", "w", None]
    if has_bias:
        b.weight("b", bias, quant.QType("i32", quant.exact_scale(q_in.scale * s_w), 0, 0))
        ins[2] = "b"
    b.op("conv", "y", ins, (N, Co, OH, OW), q_out, attrs=conv_attrs(k, st, pads, dil, group))
    b.nodes[-1].extra.update(extra or {})
    got = b.run({"x": x}, ["y"])["y"]
    real = float(q_in.scale) * np.asarray(s_w, np.float64) / float(s_out)
    return got, ref_requant(ref, real, 1, q_out), b


@pytest.mark.parametrize("name", sorted(CONV_CASES))
def test_int8_conv_is_bit_exact(name):
    r = rng(zlib.crc32(name.encode()))
    got, want, _ = _run_int_conv(CONV_CASES[name], r)
    assert got.dtype == np.int8 and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    assert 0 < np.count_nonzero(want) and len(np.unique(want)) > 20      # not a degenerate comparison


@pytest.mark.parametrize("name,limit,out_zp", [("depthwise_dilation", 6.0, 0), ("plain_3x3_bias", -1.0, 0),
                                                ("pointwise_no_bias", 2.5, -40)])
def test_int8_conv_with_fused_relu_clamps_the_requantized_result(name, limit, out_zp):
    """do_relu / relu_limit (lowering fuses conv -> relu / relu6): the integer result clamped to
    [q(0), q(limit)] equals requantizing relu(real value), which the reference computes exactly."""
    r = rng(zlib.crc32(name.encode()) + 1)
    fused, plain, b = _run_int_conv(CONV_CASES[name], r, out_zp=out_zp,
                                    extra={"do_relu": True, "relu_limit": limit})
    q = b.nodes[-1].qtype
    hi = q.qmax if limit < 0 else min(q.qmax, round_half_away(Fraction(limit) / Fraction(float(q.scale))) + out_zp)
    want = np.clip(plain.astype(np.int64), out_zp, hi)
    np.testing.assert_array_equal(fused, want)
    assert (plain < out_zp).sum() > 0 and (limit < 0 or (plain > hi).sum() > 0)    # both clamps were exercised


def test_int8_conv_ties_round_half_away_from_zero():
    """Power-of-two scales make s_in * s_w / s_out exactly 1/2, 1/4 or 1/8: many accumulators are exact ties."""
    r = rng(5)
    case = (2, 4, 3, 6, 6, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, True, 0)
    x = r.integers(-6, 7, (2, 4, 6, 6)).astype(np.int8)
    w = r.integers(-5, 6, (3, 4, 3, 3)).astype(np.int8)
    got, want, _ = _run_int_conv(case, r, s_in=0.125, s_w=np.array([0.0625, 0.03125, 0.125]), s_out=0.015625,
                                 x=x, w=w, bias_vals=np.array([3, -5, 0], np.int32))
    np.testing.assert_array_equal(got, want)
    b = ref_conv(x.astype(np.int64), w, np.array([3, -5, 0]), (1, 1), (1, 1, 1, 1), (1, 1), 1)
    assert (b[:, 0] % 2 == 1).sum() > 10 and (b[:, 0] < 0).sum() > 10         # ties of both signs were hit


def test_int8_conv_large_sums_are_exact():
    """Every product at its extreme and K = 64*5*5 = 1600: partial sums pass 2**24, where float32 would round."""
    r = rng(6)
    case = (1, 64, 3, 5, 5, (5, 5), (1, 1), (0, 0, 0, 0), (1, 1), 1, True, 0)
    x = np.full((1, 64, 5, 5), -128, np.int8)
    x[0, ::3, 2, 2] = 127
    w = np.full((3, 64, 5, 5), 127, np.int8)
    w[1] = -127
    w[2, ::2] = -127
    acc = ref_conv(x.astype(np.int64), w, None, (1, 1), (0, 0, 0, 0), (1, 1), 1)
    assert np.abs(acc).max() > 2 ** 24
    got, want, _ = _run_int_conv(case, r, s_in=0.01, s_w=np.array([1e-3, 1e-3, 2e-3]), s_out=quant.exact_scale(
        2e-5 * np.abs(acc).max() / 127 * 0.7), x=x, w=w, bias_vals=np.array([1, -1, 77], np.int32))
    np.testing.assert_array_equal(got, want)


def test_int8_conv_multiplier_above_one_and_tiny_multipliers():
    r = rng(7)
    case = CONV_CASES["plain_3x3_bias"]
    # s_out much smaller than s_in * s_w: multipliers > 1, most outputs saturate, the rest must still be exact
    got, want, _ = _run_int_conv(case, r, s_in=0.5, s_w=np.full(6, 0.5), s_out=0.09, x=r.integers(
        -2, 3, (2, 4, 7, 6)).astype(np.int8), w=r.integers(-2, 3, (6, 4, 3, 3)).astype(np.int8),
        bias_vals=r.integers(-3, 4, 6).astype(np.int32))
    np.testing.assert_array_equal(got, want)
    assert len(np.unique(want)) > 5
    # a multiplier below 2**-33 (rshift 64 and more): everything rounds to the zero point
    got, want, _ = _run_int_conv(case, r, s_in=1e-6, s_w=np.full(6, 1e-6), s_out=100.0, out_storage="u8",
                                 out_zp=7)
    np.testing.assert_array_equal(got, want)
    assert (want == 7).all()


def test_int8_conv_asymmetric_output_and_int4():
    r = rng(8)
    got, want, _ = _run_int_conv(CONV_CASES["groups_stride_asym_pads"], r, out_storage="u8", out_zp=100)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, want)
    # int4 activations, weights still int8 per channel here; output int4
    case = (2, 4, 4, 6, 6, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, True, 0)
    got, want, _ = _run_int_conv(case, r, in_storage="i4", out_storage="i4")
    assert got.min() >= -8 and got.max() <= 7
    np.testing.assert_array_equal(got, want)


def test_int8_conv_1d():
    r = rng(9)
    N, C, Co, L = 2, 3, 4, 12
    q_in = quant.QType("i8", 0.02)
    x = r.integers(-128, 128, (N, C, L)).astype(np.int8)
    w = r.integers(-127, 128, (Co, C, 3)).astype(np.int8)
    s_w = rand_scales(r, Co)
    bias = r.integers(-5000, 5000, Co).astype(np.int32)
    acc = ref_conv(x[:, :, None, :].astype(np.int64), w[:, :, None, :], bias, (1, 2), (0, 1, 0, 1), (1, 1), 1)[:, :, 0]
    s_out = quant.exact_scale(float(np.abs(acc * (0.02 * s_w)[None, :, None]).max()) / 127)
    q_out = quant.QType("i8", s_out)
    b = Builder()
    b.input("x", x.shape, q_in)
    b.weight("w", w, quant.QType("i8", s_w, 0, 0))
    b.weight("b", bias, quant.QType("i32", quant.exact_scale(0.02 * s_w), 0, 0))
    b.op("conv", "y", ["x", "w", "b"], (N, Co, acc.shape[-1]), q_out,
         attrs={"kernel_shape": [3], "strides": [2], "pads": [1, 1], "dilations": [1], "group": 1})
    got = b.run({"x": x}, ["y"])["y"]
    np.testing.assert_array_equal(got, ref_requant(acc, 0.02 * s_w / s_out, 1, q_out))


def test_int8_conv_batch_larger_than_declared_and_mlir_round_trip(tmp_path):
    """The graph declares batch 2; a batch of 6 runs at once and gives the per-sample results. The hand-built
    module prints, verifies and reads back with the same types, and runs the same."""
    r = rng(10)
    case = CONV_CASES["plain_3x3_bias"]
    got, want, b = _run_int_conv(case, r)
    g = b.graph(["y"])
    x2 = r.integers(-128, 128, (6,) + g.node_map()["x"].shape[1:]).astype(np.int8)
    big = Interpreter(g).run({"x": x2})["y"]
    small = np.concatenate([Interpreter(g).run({"x": x2[k:k + 2]})["y"] for k in range(0, 6, 2)])
    np.testing.assert_array_equal(big, small)
    path = str(tmp_path / "conv.mlir")
    ir.save_graph(g, path)
    back = ir.load_graph(path)
    assert back.node_map()["y"].qtype.text() == g.node_map()["y"].qtype.text()
    np.testing.assert_array_equal(Interpreter(back).run({"x": x2})["y"], big)


# ----------------------------------------------------------------------------------------------- int8 deconv
@pytest.mark.parametrize("group,strides,pads,dil,out_pad", [
    (1, (2, 2), (1, 0, 0, 1), (1, 1), (1, 0)),
    (2, (1, 2), (0, 0, 0, 0), (2, 1), (0, 1)),
])
def test_int8_deconv_is_bit_exact(group, strides, pads, dil, out_pad):
    r = rng(11 + group)
    N, C, H, W, Cog, k = 2, 4, 4, 5, 3, (3, 2)
    q_in = quant.QType("i8", 0.03)
    x = r.integers(-128, 128, (N, C, H, W)).astype(np.int8)
    w = r.integers(-127, 128, (C, Cog) + k).astype(np.int8)
    s_w = rand_scales(r, Cog)
    s_w_full = np.tile(s_w, group)
    bias = r.integers(-3000, 3000, Cog * group).astype(np.int32)
    acc = ref_deconv(x.astype(np.int64), w, bias, strides, pads, dil, group, out_pad)
    s_out = quant.exact_scale(float(np.abs(acc * (0.03 * s_w_full)[None, :, None, None]).max()) / 127 * 0.8)
    q_out = quant.QType("i8", s_out)
    b = Builder()
    b.input("x", x.shape, q_in)
    b.weight("w", w, quant.QType("i8", s_w, 0, 1))
    b.weight("b", bias, quant.QType("i32", quant.exact_scale(0.03 * s_w_full), 0, 0))
    attrs = conv_attrs(k, strides, pads, dil, group)
    attrs["output_padding"] = list(out_pad)
    b.op("deconv", "y", ["x", "w", "b"], acc.shape, q_out, attrs=attrs)
    got = b.run({"x": x}, ["y"])["y"]
    np.testing.assert_array_equal(got, ref_requant(acc, 0.03 * s_w_full / s_out, 1, q_out))


# ----------------------------------------------------------------------------------------------- int8 matmul
def test_int8_matmul_weight_per_channel_with_bias():
    r = rng(12)
    K, Nout = 37, 6
    q_in = quant.QType("i8", 0.04, 3)
    x = r.integers(-128, 128, (2, 3, K)).astype(np.int8)
    w = r.integers(-127, 128, (K, Nout)).astype(np.int8)
    s_w = rand_scales(r, Nout)
    bias = r.integers(-20000, 20000, Nout).astype(np.int32)
    acc = np.einsum("bmk,kn->bmn", x.astype(np.int64) - 3, w.astype(np.int64)) + bias
    s_out = quant.exact_scale(float(np.abs(acc * (0.04 * s_w)).max()) / 127 * 0.9)
    q_out = quant.QType("i8", s_out)
    b = Builder()
    b.input("x", x.shape, q_in)
    b.weight("w", w, quant.QType("i8", s_w, 0, 1))
    b.weight("b", bias, quant.QType("i32", quant.exact_scale(0.04 * s_w), 0, 0))
    b.op("matmul", "y", ["x", "w", "b"], (2, 3, Nout), q_out)
    got = b.run({"x": x}, ["y"])["y"]
    np.testing.assert_array_equal(got, ref_requant(acc, 0.04 * s_w / s_out, 2, q_out))


def test_int8_matmul_of_two_activations():
    r = rng(13)
    K = 29
    qa, qb = quant.QType("i8", 0.05, -4), quant.QType("i8", 0.0125)
    a = r.integers(-128, 128, (2, 4, K)).astype(np.int8)
    bm = r.integers(-128, 128, (2, K, 5)).astype(np.int8)
    acc = np.einsum("bmk,bkn->bmn", a.astype(np.int64) + 4, bm.astype(np.int64))
    s_out = quant.exact_scale(float(np.abs(acc).max()) * 0.05 * 0.0125 / 127)
    q_out = quant.QType("i8", s_out, 2)
    b = Builder()
    b.input("a", a.shape, qa)
    b.input("b", bm.shape, qb)
    b.op("matmul", "y", ["a", "b", None], (2, 4, 5), q_out)
    got = b.run({"a": a, "b": bm}, ["y"])["y"]
    np.testing.assert_array_equal(got, ref_requant(acc, np.array(0.05 * 0.0125 / s_out), None, q_out))


def test_int8_matmul_constant_left_operand_and_vector_weight():
    r = rng(14)
    K = 16
    # a constant left operand is quantized per tensor; the activation on the right
    c = r.integers(-127, 128, (4, K)).astype(np.int8)
    x = r.integers(-128, 128, (2, K, 3)).astype(np.int8)
    acc = np.einsum("mk,bkn->bmn", c.astype(np.int64), x.astype(np.int64))
    s_out = quant.exact_scale(float(np.abs(acc).max()) * 0.002 * 0.03 / 127)
    q_out = quant.QType("i8", s_out)
    b = Builder()
    b.weight("c", c, quant.QType("i8", 0.002))
    b.input("x", x.shape, quant.QType("i8", 0.03))
    b.op("matmul", "y", ["c", "x", None], (2, 4, 3), q_out)
    got = b.run({"x": x}, ["y"])["y"]
    np.testing.assert_array_equal(got, ref_requant(acc, np.array(0.002 * 0.03 / s_out), None, q_out))
    # a rank-1 weight (per tensor): the product drops the last axis
    v = r.integers(-127, 128, (K,)).astype(np.int8)
    xa = r.integers(-128, 128, (3, K)).astype(np.int8)
    acc = xa.astype(np.int64) @ v.astype(np.int64)
    q_out = quant.QType("i8", quant.exact_scale(float(np.abs(acc).max()) * 0.03 * 0.01 / 127))
    b = Builder()
    b.input("x", xa.shape, quant.QType("i8", 0.03))
    b.weight("v", v, quant.QType("i8", 0.01))
    b.op("matmul", "y", ["x", "v", None], (3,), q_out)
    got = b.run({"x": xa}, ["y"])["y"]
    np.testing.assert_array_equal(got, ref_requant(acc, np.array(0.03 * 0.01 / float(q_out.scale)), None, q_out))


def test_int8_matmul_long_sums_use_exact_arithmetic():
    """K = 2048 with extreme values: sums reach 2**25, beyond float32's exact integers."""
    K = 2048
    x = np.full((2, K), -128, np.int8)
    x[1, ::5] = 127
    w = np.full((K, 3), 127, np.int8)
    w[::3, 1] = -127
    w[7, 2] = 1
    x[:, 7] = 1
    acc = x.astype(np.int64) @ w.astype(np.int64)
    assert np.abs(acc).max() > 2 ** 24 and (acc % 2 == 1).any()
    s_w = np.array([1e-3, 2e-3, 3e-3])
    q_out = quant.QType("i8", quant.exact_scale(float(np.abs(acc * 0.01 * s_w).max()) / 127))
    b = Builder()
    b.input("x", x.shape, quant.QType("i8", 0.01))
    b.weight("w", w, quant.QType("i8", s_w, 0, 1))
    b.op("matmul", "y", ["x", "w", None], (2, 3), q_out)
    got = b.run({"x": x}, ["y"])["y"]
    np.testing.assert_array_equal(got, ref_requant(acc, 0.01 * s_w / float(q_out.scale), 1, q_out))


# ----------------------------------------------------------------------------------------------- Requant itself
@pytest.mark.parametrize("seed", range(6))
def test_requant_fast_paths_equal_quant_requantize(seed):
    """The kernel's requantization (float64 where provably exact, else int64) against quant.requantize."""
    r = rng(100 + seed)
    modes = set()
    for trial in range(40):
        C, L = int(r.integers(1, 7)), int(r.integers(1, 40))
        kind = trial % 4
        real = [r.uniform(1e-5, 0.9, C), 2.0 ** -r.integers(1, 12, C).astype(float), r.uniform(1.0, 5.0, C),
                10 ** r.uniform(-13, -1, C)][kind]
        m, sh = quant.multiplier_shift(real)
        storage = ["i8", "u8", "i4"][trial % 3]
        zp = {"i8": int(r.integers(-3, 4)), "u8": int(r.integers(0, 30)), "i4": 0}[storage]
        q = quant.QType(storage, 0.1, zp)
        bound = float(r.choice([300, 2 ** 12, 2 ** 20, 2 ** 23]))
        acc = r.integers(-bound, bound + 1, (2, C, L)).astype(np.float32)
        if kind == 1:
            acc = (acc // 8) * 8 + r.choice([0, 4, -4, 2], acc.shape)
        acc = np.clip(acc, -bound, bound).astype(np.float32)
        bias = r.integers(-2 ** 20, 2 ** 20, C) if trial % 2 else None
        full = acc.astype(np.int64) + (0 if bias is None else bias.reshape(1, -1, 1))
        want = quant.requantize(full, m, sh, zp, q, axis=1)
        for bnd in (np.full(C, bound), None):
            rq = tpuk.Requant(m, sh, q, zp, bias, bnd)
            modes.add((rq.mode, bool(rq.__dict__.get("ties")), bool(getattr(rq, "fuse", np.ones(1)).all())))
            np.testing.assert_array_equal(rq(acc, 1 if C > 1 else None), want)            # channels on rows
            cols = np.ascontiguousarray(acc.transpose(0, 2, 1))                              # on columns
            np.testing.assert_array_equal(rq(cols, -1 if C > 1 else None), want.transpose(0, 2, 1))
    assert {"fused", "static", "checked"} <= {m_[0] for m_ in modes}
    assert (("fused", False, False) in modes) and any(m_[1] for m_ in modes)     # partly fused; ties


def test_requant_on_large_accumulators_native_and_numpy(either_path):
    """Accumulators large enough for the native fused pass (elementwise_kernel.c), per row, per column and per
    tensor, against quant.requantize; the numpy path alone gives the same."""
    r = rng(7)
    fused = 0
    for trial in range(12):
        C = [1, 5, 16][trial % 3]
        m, sh = quant.multiplier_shift(r.uniform(1e-5, 0.02, C))
        q = quant.QType(["i8", "u8"][trial % 2], 0.1, [0, 3][trial % 2])
        bound = 2 ** 18
        acc = r.integers(-bound, bound + 1, (2, C, 3001)).astype(np.float32)
        bias = r.integers(-2 ** 16, 2 ** 16, C) if trial % 4 < 2 else None
        full = acc.astype(np.int64) + (0 if bias is None else bias.reshape(1, -1, 1))
        want = quant.requantize(full, m, sh, q.zero_point, q, axis=1)
        rq = tpuk.Requant(m, sh, q, q.zero_point, bias, np.full(C, bound))
        fused += rq.mode == "fused"
        np.testing.assert_array_equal(rq(acc, 1 if C > 1 else None), want)
        cols = np.ascontiguousarray(acc.transpose(0, 2, 1))
        np.testing.assert_array_equal(rq(cols, -1 if C > 1 else None), want.transpose(0, 2, 1))
    assert fused >= 6


# ----------------------------------------------------------------------------------------------- tables
def _all_bytes(shape=(2, 128), storage="i8", seed=0):
    v = np.arange(256, dtype=np.uint8).view(np.int8 if storage != "u8" else np.uint8)
    x = rng(seed).permutation(np.concatenate([v, rng(seed).choice(v, int(np.prod(shape)) - 256)]))
    return x.reshape(shape)


def _float_kernel(op, x, attrs=None, *more):
    node = Node("top." + op, "f", [], dict(attrs or {}), x.shape, "float32")
    return KERNELS["top." + op](node, x, *more, shape=x.shape)


UNARY = {
    "sigmoid": ({}, lambda v: 1 / (1 + np.exp(-v))),
    "silu": ({}, lambda v: v / (1 + np.exp(-v))),
    "hardswish": ({}, lambda v: v * np.clip(v / 6 + 0.5, 0, 1)),
    "clip": ({"min": -1.5, "max": 6.0}, lambda v: np.clip(v, -1.5, 6.0)),
    "gelu": ({"approximate": "none"}, None),
    "relu": ({}, lambda v: np.maximum(v, 0)),
}


@pytest.mark.parametrize("op", sorted(UNARY))
@pytest.mark.parametrize("qin", [quant.QType("i8", 0.05), quant.QType("i8", 0.031, -20), quant.QType("i4", 0.6)])
def test_unary_int8_ops_equal_dequantize_kernel_quantize(op, qin):
    attrs, f64 = UNARY[op]
    x = _all_bytes((4, 96), seed=1)
    if qin.storage == "i4":
        x = np.clip(x, -8, 7).astype(np.int8)
    q_out = quant.QType("i8", 0.023, 5 if op == "sigmoid" else 0)
    b = Builder()
    b.input("x", x.shape, qin)
    b.op(op, "y", ["x"], x.shape, q_out, attrs=attrs)
    got = b.run({"x": x}, ["y"])["y"]
    real = quant.dequantize(x, qin)
    want = quant.quantize(_float_kernel(op, real, attrs), q_out)
    assert got.dtype == np.int8
    np.testing.assert_array_equal(got, want)
    if f64 is not None:     # and within one step of the function in float64
        assert np.abs(got.astype(int) - quant.quantize(f64(real.astype(np.float64)), q_out).astype(int)).max() <= 1


def test_binary_int8_ops_with_a_constant_and_of_two_tensors():
    r = rng(15)
    qa, qb, q_out = quant.QType("i8", 0.04), quant.QType("i8", 0.017, 9), quant.QType("i8", 0.05)
    a = _all_bytes((2, 3, 64), seed=2)
    bb = r.integers(-128, 128, (2, 3, 1)).astype(np.int8)
    k = np.array([[[1.7]]], np.float32)
    b = Builder()
    b.input("a", a.shape, qa)
    b.input("b", bb.shape, qb)
    b.weight("k", k)
    b.op("mul", "m", ["a", "k"], a.shape, q_out)
    b.op("div", "d", ["k", "a"], a.shape, quant.QType("i8", 0.3))
    b.op("add", "s", ["a", "b"], a.shape, q_out)
    b.op("max", "x", ["b", "a"], a.shape, qa)
    out = b.run({"a": a, "b": bb}, ["m", "d", "s", "x"])
    ra, rb = quant.dequantize(a, qa), quant.dequantize(bb, qb)
    np.testing.assert_array_equal(out["m"], quant.quantize(ra * k, q_out))
    with np.errstate(divide="ignore"):
        np.testing.assert_array_equal(out["d"], quant.quantize(k / ra, quant.QType("i8", 0.3)))
    np.testing.assert_array_equal(out["s"], quant.quantize(ra + rb, q_out))
    np.testing.assert_array_equal(out["x"], quant.quantize(np.maximum(rb, ra), qa))


def test_other_int8_ops_dequantize_compute_quantize():
    """avgpool, softmax, concat of different scales, scale with f32 constants: dequantize -> float -> quantize."""
    r = rng(16)
    q1, q2, q_out = quant.QType("i8", 0.02), quant.QType("i8", 0.05, -3), quant.QType("i8", 0.04)
    x = r.integers(-128, 128, (2, 3, 6, 6)).astype(np.int8)
    y = r.integers(-128, 128, (2, 2, 6, 6)).astype(np.int8)
    sc, bi = r.standard_normal(3).astype(np.float32), r.standard_normal(3).astype(np.float32)
    pool = dict(POOL_3X3_S2)
    b = Builder()
    b.input("x", x.shape, q1)
    b.input("y", y.shape, q2)
    b.weight("sc", sc)
    b.weight("bi", bi)
    b.op("avgpool", "ap", ["x"], (2, 3, 3, 3), q_out, attrs=pool)
    b.op("softmax", "sm", ["x"], x.shape, quant.QType("i8", 1 / 127), attrs={"axis": 1})
    b.op("concat", "cc", ["x", "y"], (2, 5, 6, 6), q_out, attrs={"axis": 1})
    b.op("scale", "s", ["x", "sc", "bi"], x.shape, q_out)
    out = b.run({"x": x, "y": y}, ["ap", "sm", "cc", "s"])
    rx, ry = quant.dequantize(x, q1), quant.dequantize(y, q2)
    pnode = Node("top.avgpool", "p", [], pool, (2, 3, 3, 3), "float32")
    np.testing.assert_array_equal(out["ap"], quant.quantize(KERNELS["top.avgpool"](pnode, rx, shape=(2, 3, 3, 3)),
                                                            q_out))
    np.testing.assert_array_equal(out["sm"], quant.quantize(_float_kernel("softmax", rx, {"axis": 1}),
                                                            quant.QType("i8", 1 / 127)))
    np.testing.assert_array_equal(out["cc"], quant.quantize(np.concatenate([rx, ry], 1), q_out))
    np.testing.assert_array_equal(out["s"], quant.quantize(rx * sc[:, None, None] + bi[:, None, None], q_out))


# ----------------------------------------------------------------------------------------------- data movement
def test_data_movement_is_exact_on_int8():
    r = rng(17)
    q = quant.QType("i8", 0.07, -2)
    x = r.integers(-128, 128, (2, 8, 4, 6)).astype(np.int8)
    xs = r.integers(-128, 128, (2, 8, 4, 6)).astype(np.int8)
    idx = np.array([3, 0, 3, -1], np.int64)
    pool = dict(POOL_3X3_S2)
    b = Builder()
    b.input("x", x.shape, q)
    b.input("x2", xs.shape, q)
    b.weight("idx", idx)
    b.op("reshape", "rs", ["x"], (2, 8, 24), q)
    b.op("permute", "pm", ["x"], (2, 4, 6, 8), q, attrs={"order": [0, 2, 3, 1]})
    b.op("slice", "sl", ["x"], (2, 8, 2, 3), q, attrs={"starts": [1, 0], "ends": [4, 6], "steps": [2, 2],
                                                          "axes": [2, 3]})
    b.op("pad", "p0", ["x"], (2, 8, 6, 7), q, attrs={"pads": [0, 0, 1, 0, 0, 0, 1, 1], "mode": "constant",
                                                        "value": 0.0})
    b.op("pad", "pv", ["x"], (2, 8, 5, 6), q, attrs={"pads": [0, 0, 1, 0, 0, 0, 0, 0], "mode": "constant",
                                                        "value": 0.5})
    b.op("pad", "pr", ["x"], (2, 8, 4, 8), q, attrs={"pads": [0, 0, 0, 1, 0, 0, 0, 1], "mode": "reflect",
                                                        "value": 0.0})
    b.op("maxpool", "mp", ["x"], (2, 8, 2, 3), q, attrs=pool)
    b.op("expand", "ex", ["sl"], (2, 8, 2, 3), q)
    b.op("tile", "tl", ["x"], (2, 8, 8, 6), q, attrs={"repeats": [1, 1, 2, 1]})
    b.op("depth_to_space", "d2s", ["x"], (2, 2, 8, 12), q, attrs={"blocksize": 2, "mode": "DCR"})
    b.op("space_to_depth", "s2d", ["x"], (2, 32, 2, 3), q, attrs={"blocksize": 2})
    b.op("gather", "ga", ["x", "idx"], (2, 8, 4, 4), q, attrs={"axis": 3})
    b.op("concat", "cc", ["x", "x2"], (2, 16, 4, 6), q, attrs={"axis": 1})
    names = ["rs", "pm", "sl", "p0", "pv", "pr", "mp", "ex", "tl", "d2s", "s2d", "ga", "cc"]
    out = b.run({"x": x, "x2": xs}, names)
    zp_pad = int(quant.quantize(np.array([0.0]), q)[0])
    want = {
        "rs": x.reshape(2, 8, 24), "pm": x.transpose(0, 2, 3, 1), "sl": x[:, :, 1:4:2, 0:6:2],
        "p0": np.pad(x, [(0, 0), (0, 0), (1, 1), (0, 1)], constant_values=zp_pad),
        "pv": np.pad(x, [(0, 0), (0, 0), (1, 0), (0, 0)], constant_values=int(quant.quantize(np.array([0.5]), q)[0])),
        "pr": np.pad(x, [(0, 0), (0, 0), (0, 0), (1, 1)], mode="reflect"),
        "tl": np.tile(x, (1, 1, 2, 1)),
        "d2s": x.reshape(2, 2, 2, 2, 4, 6).transpose(0, 3, 4, 1, 5, 2).reshape(2, 2, 8, 12),
        "s2d": x.reshape(2, 8, 2, 2, 3, 2).transpose(0, 3, 5, 1, 2, 4).reshape(2, 32, 2, 3),
        "ga": x[:, :, :, [3, 0, 3, 5]], "cc": np.concatenate([x, xs], 1),
    }
    want["ex"] = want["sl"]
    mp = np.full((2, 8, 2, 3), -128, np.int64)
    xp = np.pad(x.astype(np.int64), [(0, 0), (0, 0), (1, 1), (1, 1)], constant_values=-10 ** 6)
    for i in range(2):
        for j in range(3):
            mp[:, :, i, j] = xp[:, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3].max(axis=(2, 3))
    want["mp"] = mp.astype(np.int8)
    for n in names:
        assert out[n].dtype == np.int8, n
        np.testing.assert_array_equal(out[n], want[n], err_msg=n)
    # and each equals dequantize -> move -> quantize (what the contract defines)
    real = quant.dequantize(x, q)
    np.testing.assert_array_equal(quant.quantize(real.transpose(0, 2, 3, 1), q), out["pm"])
    np.testing.assert_array_equal(quant.quantize(np.pad(real, [(0, 0), (0, 0), (1, 0), (0, 0)],
                                                        constant_values=0.5), q), out["pv"])


def test_data_movement_with_a_new_type_requantizes():
    """A data-movement op whose result type differs from its input's (a constant data operand, or a model's
    own threshold) is dequantize -> move -> quantize."""
    r = rng(18)
    q_in, q_out = quant.QType("i8", 0.05), quant.QType("i8", 0.02)
    x = r.integers(-128, 128, (2, 6)).astype(np.int8)
    table = r.standard_normal((5, 3)).astype(np.float32)
    b = Builder()
    b.input("x", x.shape, q_in)
    b.input("i", (2, 2), dtype="int64")
    b.weight("t", table)
    b.op("reshape", "rs", ["x"], (2, 2, 3), q_out)
    b.op("gather", "ga", ["t", "i"], (2, 2, 3), q_out, attrs={"axis": 0})
    ii = np.array([[0, 4], [2, 2]], np.int64)
    out = b.run({"x": x, "i": ii}, ["rs", "ga"])
    np.testing.assert_array_equal(out["rs"], quant.quantize(quant.dequantize(x, q_in).reshape(2, 2, 3), q_out))
    np.testing.assert_array_equal(out["ga"], quant.quantize(table[ii], q_out))


# ----------------------------------------------------------------------------------------------- f16 / bf16
SPECIAL_BITS = [0x3F808000, 0x3F818000, 0x3F80FFFF, 0x3F807FFF, 0xBF808000, 0xBF818000, 0x7F7FFFFF, 0xFF7FFFFF,
                0x7F7F8000, 0x7F7F7FFF, 0x00000001, 0x00008000, 0x00018000, 0x80008000, 0x007FFFFF, 0x7F800000,
                0xFF800000, 0x00000000, 0x80000000, 0x7F800001, 0x7FC00000, 0xFFFFFFFF, 0xFFFF8000, 0x7FFF8000,
                0xFF800001, 0x3F800001]


def test_bf16_rounding_matches_bit_level_reference():
    bits = np.concatenate([np.array(SPECIAL_BITS, np.uint32),
                           rng(19).integers(0, 2 ** 32, 20000, dtype=np.uint64).astype(np.uint32)])
    x = bits.view(np.float32)
    with np.errstate(all="ignore"):
        got = tpuk.round_bf16(x).view(np.uint32)
    for b_in, b_out in zip(bits.tolist(), got.tolist()):
        want = bf16_bits_ref(b_in)
        if want is None:
            assert np.isnan(np.uint32(b_out).view(np.float32)), hex(b_in)
        else:
            assert b_out == want, (hex(b_in), hex(b_out), hex(want))
    # ties: 1 + 2**-8 is halfway between 1 and 1 + 2**-7 and goes to the even 1; 1 + 3 * 2**-8 goes up
    assert tpuk.round_bf16(np.array([1 + 2 ** -8, 1 + 3 * 2 ** -8, -(1 + 2 ** -8)], np.float32)).tolist() == \
        [1.0, 1 + 2 ** -6, -1.0]
    x = rng(20).standard_normal(5000).astype(np.float32)
    from tpu_cal import lowering
    np.testing.assert_array_equal(tpuk.round_bf16(x), lowering.round_float(x, "bf16"))   # weights agree


def test_f16_rounding_matches_exact_reference():
    f16 = np.arange(0, 0x7C00, 37, dtype=np.uint16).view(np.float16).astype(np.float32)
    nxt = np.nextafter(f16.astype(np.float16), np.float16(np.inf)).astype(np.float32)
    mids = ((f16.astype(np.float64) + nxt.astype(np.float64)) / 2).astype(np.float32)   # exact: ties
    vals = np.concatenate([f16, mids, np.nextafter(mids, 0), np.nextafter(mids, 1e9), -mids,
                           rng(21).standard_normal(3000).astype(np.float32) * 10.0 ** rng(22).integers(-9, 5, 3000),
                           np.array([65504, 65519.99, 65520, 7e4, 6e-8, 2.9e-8, 3e-8, -0.0, np.inf], np.float32)])
    got = tpuk.round_f16(vals)
    assert got.dtype == np.float32
    for v, g in zip(vals.tolist(), got.tolist()):
        want = f16_ref(v)
        assert g == want or (math.isnan(g) and math.isnan(want)), (v, g, want)


def test_f16_and_bf16_ops_round_their_results():
    r = rng(23)
    a = tpuk.round_bf16(r.standard_normal((2, 50)).astype(np.float32))
    bb = tpuk.round_bf16(r.standard_normal((2, 50)).astype(np.float32))
    x16 = tpuk.round_f16(r.standard_normal((1, 3, 6, 6)).astype(np.float32))
    w16 = tpuk.round_f16(r.standard_normal((4, 3, 3, 3)).astype(np.float32))
    b = Builder()
    b.input("a", a.shape, elem="bf16")
    b.input("b", bb.shape, elem="bf16")
    b.input("x", x16.shape, elem="f16")
    b.weight("w", w16, elem="f16")
    b.op("add", "s", ["a", "b"], a.shape, prec="BF16", elem="bf16")
    b.op("sigmoid", "sg", ["a"], a.shape, prec="BF16", elem="bf16")
    b.op("conv", "c", ["x", "w", None], (1, 4, 4, 4), prec="F16", elem="f16", attrs=conv_attrs((3, 3)))
    b.op("conv", "c32", ["x", "w", None], (1, 4, 4, 4), prec="F32", attrs=conv_attrs((3, 3)))
    out = b.run({"a": a, "b": bb, "x": x16}, ["s", "sg", "c", "c32"])
    np.testing.assert_array_equal(out["s"], tpuk.round_bf16(a + bb))
    np.testing.assert_array_equal(out["sg"], tpuk.round_bf16(_float_kernel("sigmoid", a)))
    cnode = Node("top.conv", "c", [], conv_attrs((3, 3)), (1, 4, 4, 4), "float32")
    ref32 = KERNELS["top.conv"](cnode, x16, w16, None, shape=(1, 4, 4, 4))
    np.testing.assert_array_equal(out["c32"], ref32)            # F32: the float kernel, bit for bit
    np.testing.assert_array_equal(out["c"], ref32.astype(np.float16).astype(np.float32))


# ----------------------------------------------------------------------------------------------- casts
def test_casts_between_every_kind():
    r = rng(24)
    x = (r.standard_normal((3, 40)) * 3).astype(np.float32)
    x[0, :5] = [0.0125, -0.0125, 0.0375, 1e9, -1e9]            # ties at scale 0.025 and saturation
    q8, qa, q4 = quant.QType("i8", 0.025), quant.QType("u8", 0.031, 119), quant.QType("i4", 0.4)
    b = Builder()
    b.input("x", x.shape)
    b.op("cast", "x_i8", ["x"], x.shape, q8, prec=None)
    b.op("cast", "x_u8", ["x"], x.shape, qa, prec=None)
    b.op("cast", "back", ["x_i8"], x.shape, prec=None)
    b.op("cast", "i8_u8", ["x_i8"], x.shape, qa, prec=None)
    b.op("cast", "i8_i4", ["x_i8"], x.shape, q4, prec=None)
    b.op("cast", "u8_i8", ["x_u8"], x.shape, q8, prec=None)
    b.op("cast", "x_bf16", ["x"], x.shape, prec=None, elem="bf16")
    b.op("cast", "x_f16", ["x"], x.shape, prec=None, elem="f16")
    b.op("cast", "f16_f32", ["x_f16"], x.shape, prec=None)
    b.op("cast", "f16_bf16", ["x_f16"], x.shape, prec=None, elem="bf16")
    b.op("cast", "i8_bf16", ["x_i8"], x.shape, prec=None, elem="bf16")
    b.op("cast", "bf16_i8", ["x_bf16"], x.shape, q8, prec=None)
    b.op("cast", "to_int", ["x"], x.shape, prec="NONE", dtype="int64")
    names = ["x_i8", "x_u8", "back", "i8_u8", "i8_i4", "u8_i8", "x_bf16", "x_f16", "f16_f32", "f16_bf16",
             "i8_bf16", "bf16_i8", "to_int"]
    out = b.run({"x": x}, names)
    xi8 = quant.quantize(x, q8)
    np.testing.assert_array_equal(out["x_i8"], xi8)
    assert out["x_i8"][0, :5].tolist() == [1, -1, 2, 127, -128]         # half away from zero, saturated
    np.testing.assert_array_equal(out["x_u8"], quant.quantize(x, qa))
    np.testing.assert_array_equal(out["back"], quant.dequantize(xi8, q8))
    # quant -> quant: integer requantization by multiplier_shift(s_in / s_out)
    np.testing.assert_array_equal(out["i8_u8"], ref_requant(xi8.astype(np.int64), np.array(0.025 / 0.031), None, qa))
    np.testing.assert_array_equal(out["i8_i4"], ref_requant(xi8.astype(np.int64), np.array(0.025 / 0.4), None, q4))
    xu = quant.quantize(x, qa)
    np.testing.assert_array_equal(out["u8_i8"], ref_requant(xu.astype(np.int64) - 119, np.array(0.031 / 0.025),
                                                            None, q8))
    np.testing.assert_array_equal(out["x_bf16"], tpuk.round_bf16(x))
    np.testing.assert_array_equal(out["x_f16"], tpuk.round_f16(x))
    np.testing.assert_array_equal(out["f16_f32"], out["x_f16"])
    np.testing.assert_array_equal(out["f16_bf16"], tpuk.round_bf16(out["x_f16"]))
    np.testing.assert_array_equal(out["i8_bf16"], tpuk.round_bf16(quant.dequantize(xi8, q8)))
    np.testing.assert_array_equal(out["bf16_i8"], quant.quantize(out["x_bf16"], q8))
    np.testing.assert_array_equal(out["to_int"], x.astype(np.int64))
    # round trips: int8 -> f32 -> int8 is the identity; f32 -> i8 -> f32 stays within half a step
    b = Builder()
    b.input("q", (256,), q8)
    b.op("cast", "f", ["q"], (256,), prec=None)
    b.op("cast", "q2", ["f"], (256,), q8, prec=None)
    allq = np.arange(-128, 128).astype(np.int8)
    np.testing.assert_array_equal(b.run({"q": allq}, ["q2"])["q2"], allq)
    inside = np.clip(x, -3.1, 3.1)
    assert np.abs(quant.dequantize(quant.quantize(inside, q8), q8) - inside).max() <= 0.0125 + 1e-6


# ----------------------------------------------------------------------------------------------- simulate
def test_run_both_pairs_tensors_by_name_and_dequantizes():
    from tpu_cal.simulate import paired_names, run_both
    r = rng(25)
    x = r.standard_normal((5, 4)).astype(np.float32)
    w = r.standard_normal((4, 3)).astype(np.float32)
    fg = Graph("f", ["x"], ["y"], [Node("top.input", "x", [], {}, (1, 4)), Node("top.weight", "w", [], {"name": "w"},
                                                                                 (4, 3)),
                                    Node("top.matmul", "mm", ["x", "w", None], {}, (1, 3)),
                                    Node("top.relu", "y", ["mm"], {}, (1, 3))], {"w": w})
    qx, qm = quant.QType("i8", quant.exact_scale(3 / 127)), quant.QType("i8", quant.exact_scale(4 / 127))
    wi, qw = quant.per_channel_weight(w, 1)
    b = Builder()
    b.input("x", (1, 4))
    b.op("cast", "x_i8", ["x"], (1, 4), qx, prec=None)
    b.weight("w_int8", wi, qw)
    b.op("matmul", "mm", ["x_i8", "w_int8", None], (1, 3), qm)
    b.op("relu", "y", ["mm"], (1, 3), qm)
    b.op("cast", "y_f32", ["y"], (1, 3), prec=None)
    lg = b.graph(["y_f32"])
    assert paired_names(fg, lg) == ["x", "mm", "y"]
    ft, qt = run_both(fg, lg, {"x": x}, batch_size=2)
    assert set(ft) == set(qt) == {"x", "mm", "y"}
    out = Interpreter(lg).run({"x": x}, keep=["y"])
    np.testing.assert_array_equal(qt["y"], quant.dequantize(out["y"], qm))
    np.testing.assert_allclose(ft["y"], np.maximum(x @ w, 0), rtol=1e-5, atol=1e-6)
    assert qt["y"].dtype == np.float32 and qt["y"].shape == (5, 3)
    assert np.abs(qt["y"] - ft["y"]).max() < 0.1


# ----------------------------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def cls(tmp_path_factory):
    from tpu_cal.zoo import ModelUnavailable
    from tpu_cal.zoo.ppocr import ppocr
    try:
        model = ppocr("cls")
    except ModelUnavailable as e:
        pytest.skip(f"model unavailable: {e}")
    d = tmp_path_factory.mktemp("cls_sim")
    rc, _, err = run_cli("transform", "--model_name", "cls", "--model_def", model, "--mlir", d / "cls.mlir",
                         "--input_shapes", "[[1,3,48,192]]", "--keep_aspect_ratio", "--pad_type", "normal",
                         "--pad_value", "127", "--mean", "127.5,127.5,127.5", "--scale",
                         "0.0078431,0.0078431,0.0078431", "--pixel_format", "bgr")
    assert rc == 0, err
    rc, _, err = run_cli("calibrate", d / "cls.mlir", "--dataset", SAMPLES, "--input_num", "64", "--tune_num", "2",
                         "-o", d / "cls.cali")
    assert rc == 0, err
    g = ir.load_graph(str(d / "cls.mlir"))
    from tpu_cal.preprocess import Preprocess, load_inputs
    node = g.node_map()[g.inputs[0]]
    pre = Preprocess.from_attrs(g.attrs.get("preprocess"))
    files = sorted(glob.glob(os.path.join(SAMPLES, "*.png")))
    assert len(files) >= 32
    x = np.concatenate([load_inputs(f, [node], pre)[node.name] for f in files])
    return d, g, {node.name: x}


def _lowered(cls, name, *flags):
    d, g, _ = cls
    out = d / f"{name}.mlir"
    rc, _, err = run_cli("lower", d / "cls.mlir", "-o", out, "--processor", "bm1684x", *flags)
    assert rc == 0, err
    return ir.load_graph(str(out))


@pytest.mark.real
def test_cls_int8_simulation_is_close_to_float(cls):
    from tpu_cal.metrics import cosine
    from tpu_cal.simulate import run_both
    d, g, feeds = cls
    low = _lowered(cls, "int8", "--quantize", "INT8", "--calibration_table", d / "cls.cali")
    ft, qt = run_both(g, low, feeds, batch_size=16)
    o = g.outputs[0]
    cos = cosine(ft[o], qt[o])
    assert cos >= 0.98, cos
    # every compared layer stays correlated (a broken kernel shows up as a collapse somewhere)
    assert min(cosine(ft[n], qt[n]) for n in ft) > 0.9


@pytest.mark.real
def test_cls_all_f32_qtable_is_bit_identical_and_bf16_is_close(cls, tmp_path):
    from tpu_cal.metrics import cosine
    from tpu_cal.simulate import run_both
    d, g, feeds = cls
    qtable = tmp_path / "all_f32.qtable"
    qtable.write_text("".join(f"{n.name} F32\n" for n in g.compute_nodes()))
    low = _lowered(cls, "f32", "--quantize", "INT8", "--calibration_table", d / "cls.cali", "--quantize_table",
                   qtable)
    assert {n.extra.get("precision") for n in low.compute_nodes()} == {"F32"}
    ft, qt = run_both(g, low, feeds, batch_size=16)
    for n in ft:
        np.testing.assert_array_equal(qt[n], ft[n], err_msg=n)
    low = _lowered(cls, "bf16", "--quantize", "BF16")
    ft, qt = run_both(g, low, feeds, batch_size=16)
    o = g.outputs[0]
    assert cosine(ft[o], qt[o]) >= 0.999


@pytest.mark.real
def test_cls_lower_test_input_hook_exit_codes(cls, tmp_path):
    d, g, feeds = cls
    sample = os.path.join(SAMPLES, "line1_096_0.png")
    flags = ["lower", d / "cls.mlir", "-o", tmp_path / "m.mlir", "--processor", "bm1684x", "--quantize", "INT8",
             "--calibration_table", d / "cls.cali", "--test_input", sample]
    rc, out, err = run_cli(*flags, "--tolerance", "0.9,0.5")
    assert rc == 0, err
    assert g.outputs[0] in out and "cosine" in out
    rc, out, err = run_cli(*flags, "--tolerance", "1.5,0.5")
    assert rc == 1 and "below --tolerance" in err and "Traceback" not in err
    # the transform's saved outputs as the reference
    ref = tmp_path / "ref.npz"
    node = g.node_map()[g.inputs[0]]
    one = {node.name: feeds[node.name][:1]}
    np.savez(tmp_path / "in.npz", **one)
    fl = Interpreter(g).run(one)
    np.savez(ref, **{k: v for k, v in fl.items()})
    rc, out, err = run_cli(*flags[:-1], tmp_path / "in.npz", "--test_reference", ref, "--tolerance", "0.9")
    assert rc == 0, err
    assert "ref.npz" in out
