"""Quantized types and integer arithmetic shared by lowering, the quantized interpreter and QDQ export.

Types are MLIR's `!quant.uniform`: per tensor `!quant.uniform<i8:f32, 0.0235>` (zero point 0, symmetric) or
`!quant.uniform<i8:f32, 0.0235:-12>` (asymmetric), per axis `!quant.uniform<i8:f32:0, {0.1,0.2}>`. MLIR prints
scales with 7 significant digits, so every scale made here is rounded to that precision first (`exact_scale`):
the printed IR then holds exactly the numbers the simulation uses.

Rounding (documented once, used everywhere):
- float -> integer (quantize, casts): round half away from zero, then saturate to the storage range;
- requantization of an integer accumulator: y = sat(round_half_away(acc * M / 2**rshift)) with a 31-bit
  multiplier M and a right shift chosen so M * 2**-rshift equals the real multiplier within 2**-31 relative,
  computed exactly in int64.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

STORAGE = {"i8": (np.int8, -128, 127), "u8": (np.uint8, 0, 255), "i4": (np.int8, -8, 7), "u4": (np.uint8, 0, 15),
           "i16": (np.int16, -32768, 32767), "i32": (np.int32, -2 ** 31, 2 ** 31 - 1)}


def exact_scale(s):
    """Scale(s) rounded to 7 significant digits (what MLIR prints), as float64."""
    return np.array([float(f"{v:.6e}") for v in np.ravel(s)]).reshape(np.shape(s)) if np.ndim(s) else \
        float(f"{float(s):.6e}")


@dataclass
class QType:
    storage: str                       # i8, u8, i4, u4, i16, i32
    scale: float | np.ndarray          # per tensor: float; per axis: 1-d array
    zero_point: int | np.ndarray = 0
    axis: int | None = None            # per-axis quantization dimension
    expressed: str = "f32"

    @property
    def dtype(self):
        return STORAGE[self.storage][0]

    @property
    def qmin(self) -> int:
        return STORAGE[self.storage][1]

    @property
    def qmax(self) -> int:
        return STORAGE[self.storage][2]

    def _bcast(self, v, ndim: int):
        if self.axis is None:
            return v
        shape = [1] * ndim
        shape[self.axis] = -1
        return np.asarray(v).reshape(shape)

    def text(self) -> str:
        def f(v):
            return f"{float(v):.6e}"
        if self.axis is None:
            zp = f":{int(self.zero_point)}" if int(self.zero_point) else ""
            return f"!quant.uniform<{self.storage}:{self.expressed}, {f(self.scale)}{zp}>"
        zps = np.broadcast_to(np.asarray(self.zero_point), np.shape(self.scale))
        items = ",".join(f(s) + (f":{int(z)}" if int(z) else "") for s, z in zip(np.ravel(self.scale), zps))
        return f"!quant.uniform<{self.storage}:{self.expressed}:{self.axis}, {{{items}}}>"


_NUM = r"[-+0-9.eEinfa]+"
_PER_TENSOR = re.compile(rf"!quant\.uniform<(\w+):(\w+), ({_NUM})(?::(-?\d+))?>")
_PER_AXIS = re.compile(r"!quant\.uniform<(\w+):(\w+):(\d+), \{([^}]*)\}>")


def parse_qtype(text: str) -> QType | None:
    """The QType of a tensor type's text (`tensor<1x8x!quant.uniform<...>>`), None when not quantized."""
    m = _PER_AXIS.search(text)
    if m:
        scales, zps = [], []
        for item in m.group(4).split(","):
            s, _, z = item.strip().partition(":")
            scales.append(float(s))
            zps.append(int(z) if z else 0)
        zp = np.array(zps, np.int64)
        return QType(m.group(1), np.array(scales), zp if zp.any() else 0, int(m.group(3)), m.group(2))
    m = _PER_TENSOR.search(text)
    if m:
        return QType(m.group(1), float(m.group(3)), int(m.group(4) or 0), None, m.group(2))
    return None


def round_half_away(x):
    return np.where(x >= 0, np.floor(x + 0.5), np.ceil(x - 0.5))


def quantize(x: np.ndarray, q: QType) -> np.ndarray:
    s = q._bcast(q.scale, np.ndim(x))
    z = q._bcast(q.zero_point, np.ndim(x))
    v = round_half_away(np.asarray(x, np.float64) / s) + z
    return np.clip(v, q.qmin, q.qmax).astype(q.dtype)


def dequantize(xq: np.ndarray, q: QType) -> np.ndarray:
    s = q._bcast(q.scale, np.ndim(xq))
    z = q._bcast(q.zero_point, np.ndim(xq))
    return ((np.asarray(xq, np.float64) - z) * s).astype(np.float32)


def symmetric(th: float, storage: str = "i8") -> QType:
    """Per-tensor symmetric type for threshold th: scale th / qmax."""
    return QType(storage, exact_scale(th / STORAGE[storage][2]))


def asymmetric(lo: float, hi: float, storage: str = "i8") -> QType:
    """Per-tensor asymmetric type covering [lo, hi] (which is widened to contain 0)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    _, qmin, qmax = STORAGE[storage]
    s = exact_scale(max(hi - lo, 1e-12) / (qmax - qmin))
    zp = int(np.clip(round_half_away(qmin - lo / s), qmin, qmax))
    return QType(storage, s, zp)


def per_channel_weight(w: np.ndarray, axis: int, storage: str = "i8") -> tuple[np.ndarray, QType]:
    """Symmetric per-channel quantization of a weight: (integer array, per-axis QType)."""
    qmax = STORAGE[storage][2]
    red = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.abs(w).max(axis=red) if red else np.abs(w)
    scale = exact_scale(np.where(amax > 0, amax / qmax, 1.0))
    q = QType(storage, scale, 0, axis)
    return quantize(w, q), q


def multiplier_shift(real: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """(M, rshift) per element with M in [2**30, 2**31) (or 0) and M * 2**-rshift ~= real."""
    real = np.asarray(real, np.float64)
    m = np.zeros(real.shape, np.int64)
    sh = np.zeros(real.shape, np.int64)
    nz = real > 0
    mant, exp = np.frexp(real[nz])                  # real = mant * 2**exp, mant in [0.5, 1)
    mi = np.round(mant * 2 ** 31).astype(np.int64)
    carry = mi == 2 ** 31                           # mantissa rounded up to 1.0
    mi[carry] //= 2
    exp = exp + carry
    m[nz] = mi
    sh[nz] = 31 - exp
    return m, sh


def requantize(acc: np.ndarray, m: np.ndarray, rshift: np.ndarray, zero_point, q: QType, axis: int | None = None,
               ) -> np.ndarray:
    """Integer requantization of an int accumulator to q's storage (exact, int64; rounding half away from 0).
    m / rshift are scalars or per-channel along `axis` of acc."""
    acc = np.asarray(acc, np.int64)
    if axis is not None and np.ndim(m):
        shape = [1] * acc.ndim
        shape[axis] = -1
        m, rshift = np.reshape(m, shape), np.reshape(rshift, shape)
    rshift = np.asarray(rshift, np.int64)
    # |acc * M| < 2**62 <= 2**(rshift - 1): such a product rounds to 0 (and numpy shifts of 64 bits or more wrap)
    m = np.where(rshift >= 63, 0, m)
    rshift = np.minimum(rshift, 62)
    prod = acc * m                                    # |acc| < 2**31 (int32) times M < 2**31 fits in int64
    neg = prod < 0
    mag = np.abs(prod)
    half = np.where(rshift > 0, np.left_shift(np.int64(1), np.maximum(rshift - 1, 0)), 0)
    out = np.where(rshift > 0, np.right_shift(mag + half, np.maximum(rshift, 0)),
                   np.left_shift(mag, np.maximum(-rshift, 0)))
    out = np.where(neg, -out, out) + np.asarray(zero_point, np.int64)
    return np.clip(out, q.qmin, q.qmax).astype(q.dtype)
