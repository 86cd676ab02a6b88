"""The `tpu.*` kernels: one precision dispatcher for every tpu op (docs/lowering.md, "The quantized interpreter").

Each lowered op carries `precision` (`INT8`, `INT4`, `F16`, `BF16`, `F32`, `NONE`); the arrays hold storage values
(int8 for int8/int4 tensors, float32 for f32/f16/bf16 ones). By precision:
- `F32` / `NONE`: the float kernel of the matching `top` op.
- `F16` / `BF16`: the float kernel in float32 on the (already rounded) inputs, the result rounded to the type
  (round to nearest even; bf16 on the float32 bit pattern, NaN kept).
- `INT8` / `INT4`:
  - `conv`, `deconv`, `matmul` with quantized operands: exact integer accumulation (int8 x int8 products summed
    by the float kernels on integer values: in float32 when a bound on every partial sum, |x| max times the
    largest L1 norm of a filter, stays below 2**24, else in float64, exact below 2**53), plus the int32 bias,
    then integer requantization (multiplier and right shift per output channel from
    `quant.multiplier_shift(s_in * s_w[c] / s_out)`, rounding half away from zero, saturation; see `Requant`);
  - data movement whose result type equals its input's (reshape, permute, slice, pad, maxpool, expand, tile,
    depth/space moves, gather, and concat of equal types): the float kernel run on the int8 values directly;
  - elementwise ops of one quantized tensor (and binary ops of one quantized tensor and a constant scalar): a
    256-entry table, built by dequantize -> float kernel -> quantize over every int8 value; binary elementwise ops
    of two int8 tensors (add, mul, ...): likewise a 65536-entry table over every pair;
  - everything else: dequantize -> float kernel -> quantize. Inputs that are not quantized (exact f32 constants,
    indices, conditions) pass through unchanged.
- `tpu.cast`: quantize / dequantize / round / requantize (quant -> quant, integer), as the types on both sides say;
  a lowered model `top.cast` may also convert to plain integer types, as the float kernel does.

The kernel needs its operands' types, which the arrays do not carry, so it is registered as an object with
`bind(graph)`: the Interpreter binds it once per graph, and the bound dispatcher keeps its per-node constants
(multipliers, tables, float copies of int8 weights) for the life of that interpreter.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ... import native, quant
from ...errors import UserError
from ...graph import Graph, Node
from ...ops import TPU_OPS
from ..core import KERNELS, impl
from ..workers import matmul as _matmul, parallel as _parallel

ATTR_PRECISION = "precision"
INT_PRECISIONS = ("INT8", "INT4")
FLOAT_ELEM = {"F32": "f32", "F16": "f16", "BF16": "bf16"}

MAC_OPS = ("conv", "deconv", "matmul")
# result type == input type: the kernel moves int8 values, exactly what dequantize -> move -> quantize gives
MOVE_OPS = frozenset({"reshape", "permute", "slice", "pad", "maxpool", "expand", "tile", "depth_to_space",
                      "space_to_depth", "gather"})
# elementwise functions of one tensor: a 256-entry table equals dequantize -> kernel -> quantize
UNARY_OPS = frozenset({"relu", "leaky_relu", "clip", "sigmoid", "silu", "hardsigmoid", "hardswish", "gelu", "tanh",
                       "erf", "exp", "log", "sqrt", "abs", "neg", "reciprocal", "softplus", "mish", "floor"})
# elementwise functions of two tensors: a table when one operand is a constant scalar
BINARY_OPS = frozenset({"add", "sub", "mul", "div", "pow", "max", "min"})

_CHUNK = 1 << 15          # elements per piece of the elementwise integer passes (stays in L2)
_F32_EXACT = 2.0 ** 24    # integers below this add exactly in float32
_F64_EXACT = 2.0 ** 53


# ------------------------------------------------------------------------------------------------ rounding
def round_f16(y) -> np.ndarray:
    """float32 array of y rounded to float16 (round to nearest even; overflow to inf)."""
    with np.errstate(over="ignore"):
        return np.asarray(y).astype(np.float16).astype(np.float32)


def round_bf16(y) -> np.ndarray:
    """float32 array of y rounded to bfloat16: round to nearest even on the float32 bit pattern (a tie goes to
    the even upper half; overflow to inf), NaN kept as it is."""
    x = np.array(y, dtype=np.float32, copy=True, order="C")
    flat = x.reshape(-1)

    def work(c):
        a, b = c
        v = flat[a:b]
        nan = np.isnan(v)
        bits = v.view(np.uint32)
        keep = bits[nan] if nan.any() else None
        lsb = bits >> 16
        lsb &= 1
        bits += 0x7FFF          # wraps only for negative NaN patterns, restored below
        bits += lsb
        bits &= 0xFFFF0000
        if keep is not None:
            bits[nan] = keep

    _parallel(work, _pieces(flat.size))
    return x


def round_to(y, elem: str) -> np.ndarray:
    if elem == "f16":
        return round_f16(y)
    if elem == "bf16":
        return round_bf16(y)
    return y


def _pieces(n: int, per: int = _CHUNK):
    return [(a, min(n, a + per)) for a in range(0, n, per)] or [(0, 0)]


# ------------------------------------------------------------------------------------------ quantize / requant
def quantize(y, q: quant.QType, f32_quotient: bool = False) -> np.ndarray:
    """`quant.quantize` (y / s in float64, round half away from zero, + zero point, saturate), in cache-sized
    pieces; the same arithmetic, so bit-identical. `f32_quotient`: y / s is a float32 division (then rounded
    half away from zero), as a float unit quantizing float data does (ONNX Runtime's QuantizeLinear, the chip's
    cast): the float64 quotient would put values a few ulps below a .5 on the other side of it."""
    if q.axis is not None:          # per-channel types are weights' (constants), never a float unit's cast
        return quant.quantize(y, q)
    y = np.asarray(y)
    src = y.reshape(-1) if y.flags.c_contiguous else np.ascontiguousarray(y).reshape(-1)
    out = np.empty(y.shape, q.dtype)
    of = out.reshape(-1)
    s, z, lo, hi = float(q.scale), float(q.zero_point), q.qmin, q.qmax

    s32 = np.float32(s)

    def work(c):
        a, b = c
        if f32_quotient:
            t = np.divide(src[a:b], s32, dtype=np.float32).astype(np.float64)
        else:
            t = src[a:b].astype(np.float64)
            np.divide(t, s, out=t)
        h = np.copysign(0.5, t)
        t += h                      # t + 0.5 (t >= 0) or t - 0.5 (t < 0): exactly quant.round_half_away
        np.trunc(t, out=t)
        if z:
            t += z
        np.clip(t, lo, hi, out=t)
        of[a:b] = t

    with np.errstate(invalid="ignore"):
        _parallel(work, _pieces(src.size))
    return out


def _int_requant(x, bias, m, h, sh, z, lo_q, hi_q) -> np.ndarray:
    """int64 requantization of exact integers x: sat((p + h - [p < 0]) >> sh + z) with p = (x + bias) * m."""
    p = np.rint(x).astype(np.int64) if x.dtype.kind == "f" else x.astype(np.int64)
    if bias is not None:
        p += bias
    p *= m
    p += p >> 63                     # - [p < 0]
    p += h
    p >>= sh
    if z:
        p += z
    np.clip(p, lo_q, hi_q, out=p)
    return p


class Requant:
    """Requantization of integer accumulators to q's storage, per output channel (or per tensor):

        y = sat(round_half_away((acc + bias[c]) * m[c] / 2**rshift[c]) + zero_point)

    bit-identical to `quant.requantize` (the definition). `acc` holds exact integers in any numeric dtype (the
    float32/float64 sums of the MAC kernels); `bound` bounds |acc| per channel (None: unknown).

    Exact shortcuts, decided per channel from the constants (and per piece of rows from the data where the bounds
    do not settle it):
    - a channel whose |acc + bias| * m stays below 2**(rshift-1) always gives the zero point: multiplier 0;
    - with every multiplier below 1, acc is first clipped to the range that does not saturate ([lo, hi] per
      channel, computed with Python integers), so no clip is needed afterwards;
    - float64 when |acc| * m and |bias| * m stay below 2**52: t = (acc + bias) * (m * 2**-rshift) is then exact (an
      integer times a power of two) and so is floor(t + 0.5), which is rounding half away from zero except at
      negative exact ties; a tie needs (acc + bias) divisible by 2**(rshift - 1 - v2(m)), so where that power
      exceeds |acc + bias| there is none (otherwise trunc(t + copysign(0.5, t)) is used);
    - fused (int8/uint8/int4 results, rshift <= 44, no ties, products below 2**51): t = acc * mult +
      (bias * mult + 0.5 + z - qmin) is exact and in [0, qmax - qmin + 1) after the clip, so a cast to uint8 (which
      truncates) is the floor and adding qmin modulo 256 gives the storage byte: three passes over the data;
      channels that do not qualify are redone in int64 afterwards;
    - int64 otherwise: (p + 2**(r-1) - 1 + [p >= 0]) >> r with p = (acc + bias) * m (an arithmetic shift);
    - a multiplier of 2**30 or more (rshift < 1): `quant.requantize` itself.
    Work runs in cache-sized pieces of rows on the kernel worker pool."""

    def __init__(self, m, rshift, q: quant.QType, zero_point=0, bias=None, bound=None):
        m = np.atleast_1d(np.asarray(m, np.int64))
        r = np.atleast_1d(np.asarray(rshift, np.int64))
        C = max(m.size, r.size, 1 if bias is None else np.size(bias))
        self.m, self.r = np.broadcast_to(m, (C,)).copy(), np.broadcast_to(r, (C,)).copy()
        self.bias = None if bias is None else np.broadcast_to(np.asarray(bias, np.int64).reshape(-1), (C,)).copy()
        self.q, self.z, self.C = q, int(zero_point), C
        bias_l = [0] * C if self.bias is None else [abs(int(v)) for v in self.bias]
        known = bound is not None and bool(np.all(np.isfinite(bound)))
        bnd = [int(np.ceil(v)) for v in np.broadcast_to(np.asarray(bound, np.float64), (C,))] if known else [None] * C
        for c in range(C):
            M, R = int(self.m[c]), int(self.r[c])
            # |p| < 2**62 <= 2**(r-1) (numpy shifts also stop at 64 bits), or a known bound that never reaches 1/2
            if M and (R >= 63 or (R >= 1 and bnd[c] is not None and (bnd[c] + bias_l[c]) * M < 2 ** (R - 1))):
                self.m[c], self.r[c] = 0, 31
        if int(self.r.min()) < 1:
            self.mode = "general"
            return
        self.mult = self.m.astype(np.float64) * np.exp2(-self.r.astype(np.float64))      # exact
        self.h = np.left_shift(np.int64(1), self.r - 1)
        self.bias_max = max(bias_l)
        self.pre = int(self.r.min()) >= 31            # every multiplier < 1: clip before, not after
        self.m_max = int(self.m.max())
        lo_a, hi_a = [], []
        self.tie_min = None        # smallest |acc + bias| that can be a negative tie, over the channels
        exact, ties, fuse = [], [], []
        one_byte = np.dtype(q.dtype).itemsize == 1
        for c in range(C):
            M, R = int(self.m[c]), int(self.r[c])
            xmax = bnd[c]                                   # bound on |acc| (after the clip)
            if self.pre and M > 0:
                lo = -((-((q.qmin - self.z) * 2 ** R - 2 ** (R - 1))) // M)           # ceil division
                hi = -((-((q.qmax - self.z + 1) * 2 ** R - 2 ** (R - 1))) // M) - 1
                b = 0 if self.bias is None else int(self.bias[c])
                lo_a.append(lo - b)
                hi_a.append(hi - b)
                span = max(abs(lo), abs(hi)) + abs(b)
                xmax = span if xmax is None else min(xmax, span)
            elif self.pre:
                lo_a.append(-2 ** 60)
                hi_a.append(2 ** 60)
            if M == 0:
                exact.append(True), ties.append(False), fuse.append(self.pre and one_byte)
                continue
            v2 = (M & -M).bit_length() - 1
            tie = 2 ** max(R - 1 - v2, 0)
            self.tie_min = tie if self.tie_min is None else min(self.tie_min, tie)
            reach = None if xmax is None else xmax + bias_l[c]
            exact.append(reach is not None and reach * M < 2 ** 52)
            ties.append(reach is None or reach >= tie)
            fuse.append(self.pre and one_byte and R <= 44 and reach is not None and reach * M < 2 ** 51
                        and not ties[-1])
        if self.pre:
            self.lo_a = np.clip(np.array(lo_a, dtype=np.float64), -2.0 ** 60, 2.0 ** 60)
            self.hi_a = np.clip(np.array(hi_a, dtype=np.float64), -2.0 ** 60, 2.0 ** 60)
        self.mode = "static" if all(exact) else "checked"
        self.ties = any(t for t, e in zip(ties, exact) if e)
        self.fuse = np.array(fuse, bool)
        if self.fuse.any():
            self.mode = "fused"

    def __call__(self, acc, axis: int | None = None) -> np.ndarray:
        """Requantizes `acc` whose channel axis is `axis` (None: per tensor, or one channel)."""
        acc = np.asarray(acc)
        shape = acc.shape
        q = self.q
        ax = None if self.C == 1 or axis is None or acc.ndim == 0 else axis % acc.ndim
        N = 1
        if ax is None:
            a2 = acc.reshape(-1, shape[-1]) if acc.ndim and shape[-1] else acc.reshape(1, -1)
            per = lambda v: v[0]          # noqa: E731  (scalars)
        elif ax == acc.ndim - 1:
            a2 = acc.reshape(-1, shape[-1])
            per = lambda v: v.reshape(1, -1)                      # noqa: E731  (one per column)
        elif ax == 1:
            N = shape[0]
            a2 = acc.reshape(N * shape[1], -1)
            per = lambda v: np.tile(v, N).reshape(-1, 1)          # noqa: E731  (one per row)
        else:
            raise ValueError(f"requantization along axis {axis} of a rank-{acc.ndim} accumulator")
        if self.mode == "general":
            a = np.rint(a2).astype(np.int64) if a2.dtype.kind == "f" else a2.astype(np.int64)
            if self.bias is not None:
                a = a + per(self.bias)
            y = quant.requantize(a, np.broadcast_to(per(self.m), a.shape), np.broadcast_to(per(self.r), a.shape),
                                 self.z, q)
            return y.reshape(shape)
        R, L = a2.shape
        out = np.empty((R, L), q.dtype)
        rows = max(1, _CHUNK // max(L, 1))
        z, lo_q, hi_q, pre = self.z, q.qmin, q.qmax, self.pre
        mult = per(self.mult)
        m, sh, h = per(self.m), per(self.r), per(self.h)
        ibias = None if self.bias is None else per(self.bias)
        lo = hi = None
        if pre:
            lo, hi = per(self.lo_a), per(self.hi_a)
            if a2.dtype == np.float32:      # bounds beyond 2**24 cannot be reached by an exact float32 sum
                lo = np.maximum(lo, -2.0 ** 25).astype(np.float32)
                hi = np.minimum(hi, 2.0 ** 25).astype(np.float32)

        def cut(v, a, b):
            return v[a:b] if isinstance(v, np.ndarray) and v.ndim == 2 and v.shape[0] == R and R > 1 else v

        if self.mode == "fused":
            cq = per((0 if self.bias is None else self.bias.astype(np.float64)) * self.mult + (0.5 + z - lo_q))
            ob = out.view(np.uint8)
            qshift = np.uint8(lo_q % 256)
            lib = native.library_for(a2.size, a2.dtype == np.float32)
            done = False
            if lib is not None:     # the same steps in one pass (elementwise_kernel.c)
                x2 = np.ascontiguousarray(a2)
                prow, pcol, n = (0, 0, 1) if ax is None else (0, 1, L) if ax == acc.ndim - 1 else (1, 0, R)
                vals = [np.ascontiguousarray(np.asarray(v, d).reshape(-1))
                        for v, d in ((mult, np.float64), (cq, np.float64), (lo, np.float32), (hi, np.float32))]
                if all(v.size == n for v in vals):
                    args = [v.ctypes.data for v in vals]
                    _parallel(lambda c: lib.tc_requant_fused(x2.ctypes.data, c[0], c[1], L, *args, prow, pcol,
                                                             int(qshift), ob.ctypes.data),
                              [(a, min(R, a + rows)) for a in range(0, R, rows)])
                    done = True

            def work(c):
                a, b = c
                x = np.clip(a2[a:b], cut(lo, a, b), cut(hi, a, b))
                t = np.multiply(x, cut(mult, a, b), dtype=np.float64)
                t += cut(cq, a, b)
                o = ob[a:b]
                o[...] = t
                if qshift:
                    o += qshift

            if not done:
                _parallel(work, [(a, min(R, a + rows)) for a in range(0, R, rows)])
            if not self.fuse.all():          # the channels the fused formula cannot do exactly: int64
                bad = ~self.fuse
                if ax is not None and ax == acc.ndim - 1:
                    cols = np.flatnonzero(bad)
                    for a in range(0, R, max(1, _CHUNK // max(len(cols), 1))):
                        b = min(R, a + max(1, _CHUNK // max(len(cols), 1)))
                        out[a:b, cols] = _int_requant(
                            a2[a:b, cols], None if ibias is None else ibias[:, cols], m[:, cols], h[:, cols],
                            sh[:, cols], z, lo_q, hi_q)
                else:
                    idx = np.flatnonzero(np.tile(bad, N)) if ax is not None else np.arange(R)
                    for a in range(0, len(idx), rows):
                        ii = idx[a:a + rows]
                        pick = (lambda v: v[ii] if isinstance(v, np.ndarray) and v.ndim == 2 and v.shape[0] == R
                                else v)
                        out[ii] = _int_requant(a2[ii], pick(ibias), pick(m), pick(h), pick(sh), z, lo_q, hi_q)
            return out.reshape(shape)

        fbias = None if self.bias is None else per(self.bias.astype(np.float64))
        checked = self.mode == "checked"
        tie_min = self.tie_min if self.tie_min is not None else float("inf")
        limit = 2.0 ** 52 / max(self.m_max, 1) - self.bias_max

        def work(c):
            a, b = c
            x = a2[a:b]
            if pre:
                x = np.clip(x, cut(lo, a, b), cut(hi, a, b))
            ties = self.ties
            if checked:
                amax = max(float(x.max()), -float(x.min())) if x.size else 0.0
                if amax >= limit:
                    out[a:b] = _int_requant(x, cut(ibias, a, b), cut(m, a, b), cut(h, a, b), cut(sh, a, b), z,
                                            lo_q, hi_q)
                    return
                ties = amax + self.bias_max >= tie_min
            t = np.add(x, cut(fbias, a, b), dtype=np.float64) if fbias is not None else x.astype(np.float64)
            t *= cut(mult, a, b)
            if ties:
                t += np.copysign(0.5, t)
                np.trunc(t, out=t)
            else:
                t += 0.5
                np.floor(t, out=t)
            if z:
                t += z
            if ties or not pre:      # at a negative tie on the low bound, round-half-away goes one below
                np.clip(t, lo_q, hi_q, out=t)
            out[a:b] = t

        _parallel(work, [(a, min(R, a + rows)) for a in range(0, R, rows)])
        return out.reshape(shape)


def _same_type(a: quant.QType | None, b: quant.QType | None) -> bool:
    if a is None or b is None or a.axis is not None or b.axis is not None:
        return False
    return (a.storage == b.storage and float(a.scale) == float(b.scale)
            and int(a.zero_point) == int(b.zero_point))


def _byte_table(q: quant.QType):
    """The storage values in the order of their uint8 bit patterns (index i holds the value whose byte is i)."""
    return np.arange(256, dtype=np.uint8).view(q.dtype)


def _lookup(table: np.ndarray, x: np.ndarray) -> np.ndarray:
    """table[x] for a 1-byte x (int8 or uint8) through its bit pattern, in pieces (native for 1-byte tables)."""
    x = np.ascontiguousarray(x)
    src = x.reshape(-1).view(np.uint8)
    out = np.empty(x.shape, table.dtype)
    of = out.reshape(-1)
    lib = native.library_for(src.size, table.dtype.itemsize == 1)
    if lib is not None:
        t = np.ascontiguousarray(table)
        ta, sa, oa = t.ctypes.data, src.ctypes.data, of.ctypes.data

        def work(c):
            lib.tc_lookup(ta, sa + c[0], oa + c[0], c[1] - c[0])
    else:
        def work(c):
            a, b = c
            np.take(table, src[a:b], out=of[a:b])

    _parallel(work, _pieces(src.size, 1 << 16))
    return out


def _inner(small: tuple, full: tuple) -> int | None:
    """How an operand of shape `small` broadcasts over one of shape `full`, for tc_lookup2: 1 (same shape), 0 (a
    single value), k (one value per run of k elements: the shape is full's leading axes, then ones), else None."""
    if tuple(small) == tuple(full):
        return 1
    if int(np.prod(small)) == 1:
        return 0
    s = (1,) * (len(full) - len(small)) + tuple(small)
    k = len(s)
    while k and s[k - 1] == 1:
        k -= 1
    if len(s) != len(full) or s[:k] != tuple(full[:k]):
        return None
    return int(np.prod(full[k:]))


def _lookup2(table: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """table[byte(a), byte(b)] (a 256 x 256 table) with numpy broadcasting: natively when the table holds bytes
    and one operand has the result's shape and the other is that, one value, or one per leading block
    (`_inner`); else by pieces of the leading axis with numpy."""
    t2 = table.reshape(256, 256)
    shape = np.broadcast_shapes(np.shape(a), np.shape(b))
    lib = native.library_for(int(np.prod(shape)), table.dtype.itemsize == 1)
    if lib is not None:
        if np.shape(a) != shape:            # the full operand first: the table transposed
            a, b, t2 = b, a, t2.T
        inner = _inner(np.shape(b), shape) if np.shape(a) == shape else None
        if inner is not None:
            t = np.ascontiguousarray(t2)
            A = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
            B = np.ascontiguousarray(b).reshape(-1).view(np.uint8)
            out = np.empty(shape, table.dtype)
            ta, aa, ba, oa = t.ctypes.data, A.ctypes.data, B.ctypes.data, out.ctypes.data
            _parallel(lambda c: lib.tc_lookup2(ta, aa, ba, oa, c[0], c[1] - c[0], inner), _pieces(A.size, 1 << 16))
            return out
    A, B = np.broadcast_arrays(np.asarray(a).view(np.uint8), np.asarray(b).view(np.uint8))
    if A.ndim == 0 or A.shape[0] < 2:
        return t2[A, B]
    out = np.empty(A.shape, table.dtype)
    per = max(1, (8 * _CHUNK) // max(1, A[0].size))

    def work(c):
        out[c[0]:c[1]] = t2[A[c[0]:c[1]], B[c[0]:c[1]]]

    _parallel(work, [(i, min(len(A), i + per)) for i in range(0, len(A), per)])
    return out


# ------------------------------------------------------------------------------------------------ types
@dataclasses.dataclass
class _Type:
    kind: str                     # q, f32, f16, bf16, raw
    q: quant.QType | None = None
    const: bool = False           # produced by top.weight


def _elem_of(n: Node) -> str:
    rt = n.result_type
    if rt:
        inner = rt[len("tensor<"):-1] if rt.startswith("tensor<") else rt
        elem = inner.rsplit("x", 1)[-1] if "x" in inner else inner
        if elem in ("f16", "bf16", "f32"):
            return elem
    return "f32" if np.dtype(n.dtype).kind == "f" else "raw"


# ---------------------------------------------------------------------------------------------- dispatcher
class TpuKernel:
    """Registered for every `tpu.*` op. Unbound it only says how to run it; `bind(graph)` gives the dispatcher."""

    def bind(self, graph: Graph) -> "BoundTpuKernel":
        return BoundTpuKernel(graph)

    def __call__(self, node, *inputs, shape):
        raise RuntimeError(f"{node.op}: tpu kernels read their operands' types from the graph; run the graph "
                           f"with tpu_cal.interp.core.Interpreter, or call TpuKernel.bind(graph) first")


class BoundTpuKernel:
    """The dispatcher for one lowered graph. Per-node constants are cached by node identity (the node object is
    kept with its entry, so an id cannot be reused while the entry lives)."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.nodes = graph.node_map()
        self._types: dict[str, _Type] = {}
        self._cache: dict[int, tuple[Node, dict]] = {}

    # ----- per-node state
    def cache(self, node: Node) -> dict:
        e = self._cache.get(id(node))
        if e is None or e[0] is not node:
            e = (node, {})
            self._cache[id(node)] = e
        return e[1]

    def type_of(self, name: str | None) -> _Type | None:
        if name is None:
            return None
        t = self._types.get(name)
        if t is None:
            n = self.nodes[name]
            q = n.qtype
            t = _Type("q", q, n.op == "top.weight") if q is not None else _Type(_elem_of(n), None,
                                                                                  n.op == "top.weight")
            self._types[name] = t
        return t

    def float_node(self, node: Node) -> Node:
        """The node as the float kernels see it: a float32 result (int8 nodes declare their storage dtype)."""
        c = self.cache(node)
        if "float_node" not in c:
            c["float_node"] = dataclasses.replace(node, op="top." + node.op.split(".", 1)[1], dtype="float32",
                                                  result_type=None)
        return c["float_node"]

    # ----- dispatch
    def __call__(self, node: Node, *inputs, shape):
        op = node.op.split(".", 1)[1]
        if op == "cast":
            return self.cast(node, inputs[0])
        prec = node.extra.get(ATTR_PRECISION)
        if prec is None:
            raise UserError(f"op '{node.name}' ({node.op}) has no precision attribute; is the module lowered "
                            f"by top-to-tpu?")
        prec = str(prec).upper()
        fk = KERNELS["top." + op]
        if prec in ("F32", "NONE"):
            return fk(node, *inputs, shape=shape)
        if prec in ("F16", "BF16"):
            y = fk(node, *inputs, shape=shape)
            return round_to(y, FLOAT_ELEM[prec]) if np.asarray(y).dtype.kind == "f" else y
        if prec in INT_PRECISIONS:
            return self.integer(node, op, inputs, shape)
        raise UserError(f"op '{node.name}': unknown precision '{prec}'")

    # ----- INT8 / INT4
    def integer(self, node: Node, op: str, inputs, shape):
        q_out = node.qtype
        if q_out is None:
            raise UserError(f"op '{node.name}' ({node.op}) is {node.extra.get(ATTR_PRECISION)} but its result "
                            f"type {node.type_text} is not quantized")
        types = [self.type_of(i) for i in node.inputs]
        if op in MAC_OPS:
            y = self.mac(node, op, inputs, types, q_out, shape)
            if y is not None:
                return y
        t0 = types[0] if types else None
        if op in MOVE_OPS and t0 is not None and t0.kind == "q" and _same_type(t0.q, q_out):
            return self.move(node, op, inputs, q_out, shape)
        if op == "concat" and types and all(t is not None and _same_type(t.q, q_out) for t in types):
            return KERNELS["top.concat"](node, *inputs, shape=shape)
        tab = self.table(node, op, inputs, types, q_out)
        if tab is not None:
            table, src = tab
            return _lookup(table, inputs[src])
        tab = self.table2(node, op, types, q_out)
        if tab is not None:
            return _lookup2(tab, inputs[0], inputs[1])
        return self.generic(node, inputs, types, q_out, shape)

    def dequant(self, x, t: _Type | None, node: Node | None = None, idx: int = 0):
        """A quantized operand as float32 real values; anything else unchanged."""
        if x is None or t is None or t.kind != "q":
            return x
        q = t.q
        if q.axis is None and np.dtype(q.dtype).itemsize == 1:
            key = ("deq", idx)
            c = self.cache(node) if node is not None else {}
            if key not in c:
                c[key] = quant.dequantize(_byte_table(q), q)
            return _lookup(c[key], x)
        return quant.dequantize(x, q)

    def generic(self, node, inputs, types, q_out, shape):
        args = [self.dequant(x, t, node, i) for i, (x, t) in enumerate(zip(inputs, types))]
        y = KERNELS["top." + node.op.split(".", 1)[1]](self.float_node(node), *args, shape=shape)
        return quantize(y, q_out)

    def move(self, node, op, inputs, q, shape):
        n = node
        if op == "pad" and node.attrs.get("mode") == "constant":
            c = self.cache(node)
            if "pad_node" not in c:   # the pad value as the storage integer it quantizes to
                v = int(quant.quantize(np.array([float(node.attrs["value"])]), q)[0])
                c["pad_node"] = dataclasses.replace(node, attrs=dict(node.attrs, value=v))
            n = c["pad_node"]
        return KERNELS["top." + op](n, *inputs, shape=shape)

    def table(self, node, op, inputs, types, q_out):
        """(256-entry table, index of the quantized operand) for an elementwise op of one int8 tensor."""
        if q_out.axis is not None:
            return None
        if op in UNARY_OPS:
            src = 0
            if len(types) != 1 or types[0] is None or types[0].kind != "q":
                return None
        elif op in BINARY_OPS and len(types) == 2 and None not in types:
            qs = [k for k in (0, 1) if types[k].kind == "q"]
            if len(qs) != 1:
                return None
            src, other = qs[0], 1 - qs[0]
            c = inputs[other]
            if not (types[other].const and types[other].kind == "f32" and np.size(c) == 1
                    and np.ndim(c) <= np.ndim(inputs[src])):
                return None
        else:
            return None
        q_in = types[src].q
        if q_in.axis is not None or np.dtype(q_in.dtype).itemsize != 1:
            return None
        cache = self.cache(node)
        if "table" not in cache:
            vals = quant.dequantize(_byte_table(q_in), q_in)
            args = list(inputs)
            args[src] = vals
            with np.errstate(all="ignore"):
                y = KERNELS["top." + op](self.float_node(node), *args, shape=(256,))
            cache["table"] = quantize(np.asarray(y).reshape(-1), q_out)
        return cache["table"], src

    def table2(self, node, op, types, q_out):
        """65536-entry table (a's byte * 256 + b's byte) for an elementwise op of two int8 tensors."""
        if op not in BINARY_OPS or q_out.axis is not None or len(types) != 2:
            return None
        if not all(t is not None and t.kind == "q" and t.q.axis is None and np.dtype(t.q.dtype).itemsize == 1
                   for t in types):
            return None
        cache = self.cache(node)
        if "table2" not in cache:
            va = quant.dequantize(_byte_table(types[0].q), types[0].q).reshape(256, 1)
            vb = quant.dequantize(_byte_table(types[1].q), types[1].q).reshape(1, 256)
            with np.errstate(all="ignore"):
                y = KERNELS["top." + op](self.float_node(node), va, vb, shape=(256, 256))
            cache["table2"] = quantize(np.asarray(y).reshape(-1), q_out)
        return cache["table2"]

    # ----- conv / deconv / matmul
    def mac(self, node, op, inputs, types, q_out, shape):
        """Exact integer conv/deconv/matmul, or None when the operands are not (int8, int8[, int32 bias])."""
        if len(types) < 2 or types[0] is None or types[1] is None:
            return None
        tx, tw = types[0], types[1]
        tb = types[2] if len(types) > 2 else None
        if tx.kind != "q" or tw.kind != "q" or q_out.axis is not None or tx.q.axis is not None:
            return None
        if tb is not None and not (tb.kind == "q" and tb.q.storage == "i32" and not np.any(tb.q.zero_point)):
            return None
        x, w = inputs[0], inputs[1]
        b = inputs[2] if len(inputs) > 2 else None
        qw = tw.q
        if qw.axis is None:
            s_w = np.array([float(qw.scale)])
        else:
            if (op == "conv" and qw.axis != 0) or (op == "deconv" and qw.axis != 1) or \
                    (op == "matmul" and (w.ndim < 2 or qw.axis != w.ndim - 1)):
                return None
            s_w = np.asarray(qw.scale, np.float64)
            if op == "deconv":
                s_w = np.tile(s_w, int(node.attrs.get("group", 1)))
        c = self.cache(node)
        cacheable = tw.const and (tb is None or tb.const)
        state = c.get("mac") if cacheable else None
        if state is None:
            wz = w.astype(np.float64) - qw._bcast(np.asarray(qw.zero_point, np.float64), w.ndim)
            zx = int(tx.q.zero_point)
            xr = float(max(abs(tx.q.qmin - zx), abs(tx.q.qmax - zx)))
            l1 = _l1(op, np.abs(wz), node)                   # per output channel
            bound = xr * float(l1.max()) if l1.size else 0.0
            if bound >= _F64_EXACT:
                return None
            dt = np.float32 if bound < _F32_EXACT else np.float64
            m, sh = quant.multiplier_shift(float(tx.q.scale) * s_w / float(q_out.scale))
            bias = None if b is None else np.asarray(b, np.int64).reshape(-1)
            C = m.size
            if bias is not None and bias.size not in (1, C):
                return None
            per_ch = xr * l1 if l1.size == C else np.full(C, bound)
            state = (wz.astype(dt), dt, Requant(m, sh, q_out, q_out.zero_point, bias, per_ch))
            if cacheable:
                c["mac"] = state
        wf, dt, rq = state
        xf = x.astype(dt)
        if int(tx.q.zero_point):
            xf -= dt(int(tx.q.zero_point))
        if op == "matmul":
            acc = np.asarray(_matmul(xf, wf))       # the float kernel would cast a float64 sum to float32
            if rq.C > 1 and (acc.ndim == 0 or acc.shape[-1] != rq.C):
                return None
            return self._relu(node, q_out, rq(acc, -1 if rq.C > 1 else None))
        if "acc_node" not in c:              # the accumulator is taken before any fused ReLU
            c["acc_node"] = dataclasses.replace(self.float_node(node), extra={})
        acc = np.asarray(KERNELS["top." + op](c["acc_node"], xf, wf, None, shape=shape))
        return self._relu(node, q_out, rq(acc, 1 if rq.C > 1 else None))

    @staticmethod
    def _relu(node, q: quant.QType, y: np.ndarray) -> np.ndarray:
        """A fused ReLU / ReLU6 on the requantized result: a clamp in the integer domain. Rounding is monotone
        and maps 0 to the zero point, so this equals quantizing the clipped real value."""
        if not node.extra.get("do_relu"):
            return y
        lim = float(node.extra.get("relu_limit", -1.0))
        lo = int(quant.quantize(np.array([0.0]), q)[0])
        hi = int(quant.quantize(np.array([lim]), q)[0]) if lim >= 0 else None
        return np.clip(y, lo, hi, out=y)

    # ----- casts
    def cast(self, node: Node, x):
        src = self.type_of(node.inputs[0])
        dst = self.type_of(node.name)
        if src.kind == "q" and dst.kind == "q":
            if _same_type(src.q, dst.q):
                return x
            if src.q.axis is None and dst.q.axis is None:
                c = self.cache(node)
                zs = int(src.q.zero_point)
                if "requant" not in c:
                    m, sh = quant.multiplier_shift(float(src.q.scale) / float(dst.q.scale))
                    c["requant"] = Requant(m, sh, dst.q, dst.q.zero_point, None,
                                           max(abs(src.q.qmin - zs), abs(src.q.qmax - zs)))
                acc = x.astype(np.float32)
                if zs:
                    acc -= zs
                return c["requant"](acc)
        v = self.dequant(x, src, node, 0)
        if dst.kind == "q":
            return quantize(v, dst.q, f32_quotient=src.kind != "q")
        if dst.kind in ("f32", "f16", "bf16"):
            v = np.asarray(v)
            if v.dtype != np.float32:
                v = v.astype(np.float32)
            return round_to(v, dst.kind) if dst.kind != src.kind else v
        return np.asarray(v).astype(node.dtype)


def _l1(op: str, aw: np.ndarray, node: Node) -> np.ndarray:
    """Per output channel, the sum of |filter| over the inputs of one output: with |x| <= xr, xr times it bounds
    every partial sum of that channel's accumulator (per tensor: a single value, the largest)."""
    if aw.size == 0:
        return np.zeros(1)
    if op == "conv":
        return aw.reshape(aw.shape[0], -1).sum(axis=1)
    if op == "deconv":
        g = int(node.attrs.get("group", 1))
        Cin, Cog = aw.shape[:2]
        return aw.reshape(g, Cin // g, Cog, -1).sum(axis=(1, 3)).reshape(-1)
    if aw.ndim == 1:
        return np.array([aw.sum()])
    return aw.sum(axis=-2).reshape(-1, aw.shape[-1]).max(axis=0)


TPU_KERNEL = TpuKernel()
for _d in TPU_OPS:
    impl(f"tpu.{_d.name}")(TPU_KERNEL)
