"""Convolution-family kernels: conv, deconv, pools, scale, prelu, group_norm, pad, resize, depth/space moves.

Everything stays float32 (no float64 temporaries on activations). Layout is NCHW as the graph declares; 1-D ops
run as 2-D with a unit height. How conv is made fast with numpy + OpenBLAS (measured on 2 cores, batch 32
EfficientNet-Lite0; see bench/interp.py and bench/RESULTS.md):
- pointwise conv: W @ x[n] per sample, no im2col, the bias added while the piece is in cache;
- general conv: im2col through an `as_strided` window view, copied a cache-sized block of output rows at a time,
  then one grouped matmul per block;
- depthwise conv: per layer the cheaper of banded Toeplitz matmuls (narrow planes) and flat shifted multiply-adds
  on stride phases (wide planes), see `_depthwise`;
- the pieces of a kernel run on a small worker pool with dynamic scheduling, and matmul pieces call BLAS
  single-threaded meanwhile (`_matmul_items`): many multithreaded BLAS calls each pay a thread synchronisation,
  which on a loaded machine cost up to a scheduler time slice per call.
numba was measured as well: a straightforward JIT depthwise kernel was about 2x slower than the numpy hybrid, so
the code stays pure numpy.
"""
from __future__ import annotations

import ctypes
import math

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ... import native
from ..core import RANGE_KEY, impl
from ..workers import chunks as _chunks, matmul as _matmul, matmul_items as _matmul_items, parallel as _parallel
from ..workers import workers as _workers

F32 = np.float32
_CHUNK_BYTES = 4 << 20         # im2col buffer per chunk of samples (cache-sized: measured best)


# ----------------------------------------------------------------------------------------------- geometry helpers
def out_size(n: int, k: int, s: int, d: int, pb: int, pe: int, ceil: bool = False) -> int:
    """Output length of a window op (ONNX/PyTorch rule: with ceil_mode, a window may not start in the end pad)."""
    span = (k - 1) * d + 1
    num = n + pb + pe - span
    if ceil:
        o = -(-num // s) + 1
        if (o - 1) * s >= n + pb:
            o -= 1
    else:
        o = num // s + 1
    return max(int(o), 0)


def _tap_range(n: int, o: int, s: int, off: int):
    """Outputs j in [lo, hi) whose input index j*s + off lies in [0, n); returns (lo, hi, first input index)."""
    lo = max(0, (-off + s - 1) // s)
    hi = min(o, (n - 1 - off) // s + 1)
    hi = max(hi, lo)
    return lo, hi, lo * s + off


def _as2d(x, attrs_k, attrs_s, attrs_p, attrs_d):
    """Views a 1-D op (N,C,L) as 2-D (N,C,1,L) with matching attributes; 2-D passes through."""
    if x.ndim == 3:
        return (x[:, :, None, :], [1] + list(attrs_k), [1] + list(attrs_s),
                [0, attrs_p[0], 0, attrs_p[1]], [1] + list(attrs_d))
    return x, list(attrs_k), list(attrs_s), list(attrs_p), list(attrs_d)


# ----------------------------------------------------------------------------------------------- convolution
def _conv_attrs(a: dict, nsp: int, w):
    """kernel, strides, dilations, pads and group of a conv-family op, with ONNX's defaults for empty lists."""
    return (list(a["kernel_shape"]) or list(w.shape[2:]), list(a["strides"]) or [1] * nsp,
            list(a["dilations"]) or [1] * nsp, list(a["pads"]) or [0] * (2 * nsp), int(a["group"]))


def fused_relu(node, y):
    """A conv/deconv/matmul that lowering fused with its ReLU (`do_relu`, `relu_limit` < 0: none), as TPU-MLIR's."""
    act = _activation(node)
    if act is None:
        return y
    y = np.asarray(y)
    return act(y) if y.flags.writeable else act(y.copy())


def _activation(node):
    """The fused ReLU / ReLU6 of a MAC op as an in-place function of a piece of its output (None: none). The conv
    kernels apply it to each piece while the piece is in cache, instead of a pass over the whole output; a ReLU6
    whose node carries an `OutputRange` also measures each piece there."""
    if not node.extra.get("do_relu"):
        return None
    lim = float(node.extra.get("relu_limit", -1.0))
    if lim < 0:
        return lambda y: np.maximum(y, 0, out=y)
    sink = node.extra.get(RANGE_KEY)
    lib = native.stats_library() if sink is not None else None
    if lib is None:
        return lambda y: np.clip(y, 0, lim, out=y)
    sink.reset()

    def clip_and_measure(y):
        if y.size == 0:
            return y
        if y.dtype == np.float32 and y.flags.c_contiguous:
            b = (ctypes.c_float * 2)()
            nan = lib.tc_clip_range(y.ctypes.data, y.size, 0.0, lim, b)
            sink.add(y.size, b[0], b[1], nan)
        else:
            np.clip(y, 0, lim, out=y)
            lo, hi = float(y.min()), float(y.max())        # NaN in either: the piece holds one
            sink.add(y.size, lo, hi, math.isnan(lo) or math.isnan(hi))
        return y
    return clip_and_measure


@impl("top.conv")
def conv(node, x, w, b, shape):
    return _conv(node, x, w, b)


def _conv(node, x, w, b):
    nsp = x.ndim - 2
    k, s, d, p, g = _conv_attrs(node.attrs, nsp, w)
    x = np.asarray(x)
    w = np.asarray(w, dtype=x.dtype)
    if b is not None:
        b = np.asarray(b, dtype=x.dtype)
    act = _activation(node)
    if nsp == 1:
        x2, k, s, p, d = _as2d(x, k, s, p, d)
        y = _conv2d(x2, w[:, :, None, :], b, k, s, p, d, g, act)
        return y[:, :, 0, :]
    if nsp == 2:
        return _conv2d(x, w, b, k, s, p, d, g, act)
    y = _conv_nd(x, w, b, k, s, p, d, g)
    return y if act is None else act(y)


def _conv2d(x, w, b, k, s, p, d, g, act=None):
    """2-D convolution; `act` (see `_activation`), if given, is applied to each piece of the output."""
    N, C, H, W = x.shape
    Co = w.shape[0]
    OH = out_size(H, k[0], s[0], d[0], p[0], p[2])
    OW = out_size(W, k[1], s[1], d[1], p[1], p[3])
    if k == [1, 1] and p == [0, 0, 0, 0] and g == 1:
        return _pointwise(x[:, :, ::s[0], ::s[1]][:, :, :OH, :OW], w.reshape(Co, C), b, act)
    if g == C and Co == C and g > 1:
        return _depthwise(x, w.reshape(C, k[0], k[1]), b, k, s, p, d, OH, OW, act)
    return _im2col_conv(x, w, b, k, s, p, d, g, OH, OW, act)


def _pointwise(x, w2, b, act=None):
    """1x1 convolution: W @ x[n] per sample (split by columns when there are fewer samples than workers), each
    piece a single-threaded BLAS call on a worker thread, its bias added while the piece is still in cache."""
    N, C, H, W = x.shape
    Co = w2.shape[0]
    L = H * W
    xr = x.reshape(N, C, L) if x.flags.c_contiguous else np.ascontiguousarray(x).reshape(N, C, L)
    out = np.empty((N, Co, L), x.dtype)
    bb = None if b is None else b[:, None]
    macs = C * Co * L
    parts = 1
    if N < 2 * _workers() and macs > (1 << 22):
        parts = min(-(-2 * _workers() // N), max(1, L // 256))
    step = -(-L // parts)
    items = [(n, l0, min(L, l0 + step)) for n in range(N) for l0 in range(0, L, step)]

    def work(it):
        n, l0, l1 = it
        o = out[n, :, l0:l1]
        np.matmul(w2, xr[n, :, l0:l1], out=o)
        if bb is not None:
            o += bb
        if act is not None:
            act(o)

    _matmul_items(work, items)
    return out.reshape(N, Co, H, W)


def _pad_spatial(x, p):
    """Zero-pads the two spatial axes by [top, left, bottom, right] (a copy only when needed)."""
    if not any(p):
        return x
    N, C, H, W = x.shape
    xp = np.zeros((N, C, H + p[0] + p[2], W + p[1] + p[3]), x.dtype)
    xp[:, :, p[0]:p[0] + H, p[1]:p[1] + W] = x
    return xp


def _im2col_conv(x, w, b, k, s, p, d, g, OH, OW, act=None):
    N, C, H, W = x.shape
    Co = w.shape[0]
    Cg, Cog = C // g, Co // g
    xp = _pad_spatial(np.ascontiguousarray(x), p)
    sn, sc, sh, sw = xp.strides
    # windows[n, c, i, j, oh, ow] = xp[n, c, oh*s0 + i*d0, ow*s1 + j*d1]
    win = as_strided(xp, (N, C, k[0], k[1], OH, OW),
                     (sn, sc, sh * d[0], sw * d[1], sh * s[0], sw * s[1]), writeable=False)
    K = Cg * k[0] * k[1]
    wg = w.reshape(g, Cog, K)
    out = np.empty((N, Co, OH * OW), x.dtype)
    # pieces: one sample and a block of output rows, the im2col copy of a piece about _CHUNK_BYTES
    rows = max(1, min(OH, _CHUNK_BYTES // max(1, C * k[0] * k[1] * OW * x.itemsize)))
    if N < 2 * _workers():
        rows = min(rows, max(1, -(-OH // -(-2 * _workers() // N))))
    items = [(n, r0, min(OH, r0 + rows)) for n in range(N) for r0 in range(0, OH, rows)]
    bb = None if b is None else b.reshape(g, Cog, 1)

    def work(it):
        n, r0, r1 = it
        cols = win[n, :, :, :, r0:r1].reshape(g, K, (r1 - r0) * OW)      # the copy: im2col of this piece
        o = out[n, :, r0 * OW:r1 * OW].reshape(g, Cog, (r1 - r0) * OW)
        np.matmul(wg, cols, out=o)
        if bb is not None:
            o += bb
        if act is not None:
            act(o)

    _matmul_items(work, items)
    return out.reshape(N, Co, OH, OW)


def _conv_nd(x, w, b, k, s, p, d, g):
    """N-d convolution (3-D and up) by im2col over a window view."""
    N, C = x.shape[:2]
    sp = x.shape[2:]
    nsp = len(sp)
    Co = w.shape[0]
    outs = [out_size(sp[i], k[i], s[i], d[i], p[i], p[i + nsp]) for i in range(nsp)]
    xp = np.pad(x, [(0, 0), (0, 0)] + [(p[i], p[i + nsp]) for i in range(nsp)])
    st = xp.strides
    win = as_strided(xp, (N, C) + tuple(k) + tuple(outs),
                     st[:2] + tuple(st[2 + i] * d[i] for i in range(nsp)) + tuple(st[2 + i] * s[i] for i in range(nsp)),
                     writeable=False)
    Cg, Cog = C // g, Co // g
    L = int(np.prod(outs))
    cols = win.reshape(N, g, Cg * int(np.prod(k)), L)
    y = _matmul(w.reshape(g, Cog, -1), cols).reshape(N, Co, L)
    if b is not None:
        y += b[:, None]
    return y.reshape((N, Co) + tuple(outs))


# ----------------------------------------------------------------------------------------------- depthwise
def _depthwise(x, w, b, k, s, p, d, OH, OW, act=None):
    """Depthwise 2-D convolution (one filter per channel), exact in float32.

    `_dw_native` (float32, where the C kernels built) on every layer: it beats both numpy ways at every plane size
    measured (1.3-2.3x the banded BLAS on 7x7 and 14x14 planes, which it rounds differently in the last bits).
    Without it, the cheaper of the two numpy ways by a cost model fitted on numpy + OpenBLAS (2 cores):
    - `_dw_band` (narrow planes: the late layers, 7x7 to 28x28): banded Toeplitz matmuls. Output rows are taken
      in bands of `Bh`; for each channel the band is x[n, c, input rows of the band] @ T[c] where T[c] holds the
      filter at every (input pixel, output pixel) pair. The input rows of a band are contiguous, so x is read in
      place as a BLAS operand and results land in place in the output: no im2col. BLAS speed at (band height x
      width) / k^2 times the arithmetic.
    - `_dw_flat` (wide planes): multiply-adds on flattened planes. A tap is then one shift of the whole plane, so
      each multiply-add is a single long contiguous loop; strides are handled by splitting the padded input into
      stride phases (each tap reads one phase with a unit stride). Chunked so the working set stays in cache,
      spread over the worker pool.
    - `_dw_native`: the multiply-adds of `_dw_flat` accumulated in registers over all taps, in C.
    """
    N, C, H, W = x.shape
    lib = native.stats_library() if x.dtype == np.float32 else None
    if lib is not None:     # faster than both numpy ways on every plane size measured (2x2 to 224x224, k 3-13)
        return _dw_native(lib, x, w, b, k, s, p, d, OH, OW, act)
    kk = k[0] * k[1]
    PW = OW + ((k[1] - 1) * d[1]) // s[1]
    flat_ns = 0.35 * N * C * OH * PW * kk + 0.5 * N * C * H * W
    Bh = _band_height(OH, OW)
    Hb = (Bh - 1) * s[0] + (k[0] - 1) * d[0] + 1
    band_ns = 0.06 * N * C * OH * OW * Hb * W / Bh + 1000.0 * C * (-(-OH // Bh)) + 0.5 * N * C * H * W
    if band_ns < flat_ns:
        return _dw_band(x, w, b, k, s, p, d, OH, OW, Bh, act=act)
    return _dw_flat(x, w, b, k, s, p, d, OH, OW, act=act)


def _dw_native(lib, x, w, b, k, s, p, d, OH, OW, act=None):
    """The C kernel (native/conv_kernel.c): output vectors (of a row, or of up to 8 rows of a narrow plane)
    accumulated over all taps in registers, planes spread over the worker pool; 2.5-3x `_dw_flat` on wide planes
    and 1.3-2.3x `_dw_band` on narrow ones. `act` is applied to each chunk of planes as it is done."""
    N, C, H, W = x.shape
    x = np.ascontiguousarray(x)
    wf = np.ascontiguousarray(w, np.float32)
    bf = None if b is None else np.ascontiguousarray(b, np.float32)
    out = np.empty((N, C, OH, OW), np.float32)
    R = N * C
    args = (x.ctypes.data, wf.ctypes.data, None if bf is None else bf.ctypes.data, out.ctypes.data)
    geo = (C, H, W, k[0], k[1], s[0], s[1], d[0], d[1], p[0], p[1], OH, OW)
    per = max(1, min(-(-R // (4 * _workers())), (1 << 20) // max(1, OH * OW)))
    planes = out.reshape(R, OH * OW)

    def work(c):
        lib.tc_dwconv2d(*args, c[0], c[1], *geo)
        if act is not None:
            act(planes[c[0]:c[1]])

    _parallel(work, _chunks(R, per))
    return out


def _band_height(OH: int, OW: int) -> int:
    return max(1, min(OH, -(-32 // max(OW, 1))))


def _dw_band(x, w, b, k, s, p, d, OH, OW, Bh, t_bytes=16 << 20, act=None):
    N, C, H, W = x.shape
    kh, kw = k
    span = (kh - 1) * d[0] + 1
    Hb = (Bh - 1) * s[0] + span
    # rows of zeros above and below (only when the vertical padding is read), so every band is a plain slice
    top = p[0]
    Hp = max((OH - 1) * s[0] + span, top + H)
    if top or Hp > H:
        xv = np.zeros((N, C, Hp, W), x.dtype)
        xv[:, :, top:top + H] = x
    else:
        xv = np.ascontiguousarray(x)
    # T[c, r*W + col, o*OW + ow] = w[c, i, j] for input row r = o*s0 + i*d0 (band-relative), col inside the row
    o, ow, i, j = np.meshgrid(np.arange(Bh), np.arange(OW), np.arange(kh), np.arange(kw), indexing="ij")
    col = ow * s[1] + j * d[1] - p[1]
    ok = (col >= 0) & (col < W)
    rows = ((o * s[0] + i * d[0]) * W + col)[ok]
    cols = (o * OW + ow)[ok]
    tap = (i * kw + j)[ok]
    wf = w.reshape(C, kh * kw)
    out = np.empty((N, C, OH * OW), x.dtype)
    xf = xv.reshape(N, C, Hp * W)
    cper = max(1, t_bytes // (Hb * W * Bh * OW * x.itemsize))

    def work(c):
        c0, c1 = c
        T = np.zeros((c1 - c0, Hb * W, Bh * OW), x.dtype)
        T[:, rows, cols] = wf[c0:c1, tap]
        for o0 in range(0, OH, Bh):
            nb = min(Bh, OH - o0)
            hb = (nb - 1) * s[0] + span
            r0 = o0 * s[0]
            a = xf[:, c0:c1, r0 * W:(r0 + hb) * W].transpose(1, 0, 2)
            np.matmul(a, T[:, :hb * W, :nb * OW], out=out[:, c0:c1, o0 * OW:(o0 + nb) * OW].transpose(1, 0, 2))
        if b is not None:
            out[:, c0:c1] += b[c0:c1, None]
        if act is not None:
            act(out[:, c0:c1])

    _matmul_items(work, _chunks(C, min(cper, -(-C // (2 * _workers())))))
    return out.reshape(N, C, OH, OW)


def _dw_flat(x, w, b, k, s, p, d, OH, OW, chunk_bytes=2 << 20, act=None):
    N, C, H, W = x.shape
    R = N * C
    x3 = x.reshape(R, H, W)
    kh, kw = k
    kk = kh * kw
    # group the taps by stride phase: tap (i, j) reads phase (i*d0 % s0, j*d1 % s1) at offset (i*d0//s0, j*d1//s1)
    by_phase: dict = {}
    for i in range(kh):
        for j in range(kw):
            key = ((i * d[0]) % s[0], (j * d[1]) % s[1])
            by_phase.setdefault(key, []).append((i * kw + j, (i * d[0]) // s[0], (j * d[1]) // s[1]))
    PH = OH + ((kh - 1) * d[0]) // s[0] + 1          # one spare row absorbs the shifts of the last row
    PW = OW + ((kw - 1) * d[1]) // s[1]
    L = OH * PW                                       # outputs computed on a PW-wide grid, cropped at the end
    phases = []
    for (a, c), taps in by_phase.items():
        rlo, rhi, rf = _tap_range(H, PH, s[0], a - p[0])
        clo, chi, cf = _tap_range(W, PW, s[1], c - p[1])
        src = (slice(rf, rf + (rhi - rlo - 1) * s[0] + 1, s[0]), slice(cf, cf + (chi - clo - 1) * s[1] + 1, s[1]))
        phases.append((rlo, rhi, clo, chi, src, [(t, ii * PW + jj) for t, ii, jj in taps]))
    # per-row (sample, channel) weights as (kk, R, 1) so a chunk's weights are one view
    wr = np.ascontiguousarray(np.broadcast_to(w.reshape(1, C, kk), (N, C, kk)).reshape(R, kk).T)[:, :, None]
    br = None if b is None else np.broadcast_to(b.reshape(1, C), (N, C)).reshape(R)[:, None, None]
    out = np.empty((R, OH, OW), x.dtype)
    per = max(1, chunk_bytes // ((len(phases) * PH * PW + 2 * L) * x.itemsize))

    def work(ch):
        r0, r1 = ch
        n = r1 - r0
        acc = np.empty((n, L), x.dtype)
        tmp = np.empty((n, L), x.dtype)
        first = True
        for rlo, rhi, clo, chi, src, taps in phases:
            ph = np.empty((n, PH * PW), x.dtype)
            p3 = ph.reshape(n, PH, PW)
            if rhi > rlo and chi > clo:      # copy the inside, zero only the border
                p3[:, rlo:rhi, clo:chi] = x3[r0:r1, src[0], src[1]]
                p3[:, :rlo] = 0
                p3[:, rhi:] = 0
                p3[:, rlo:rhi, :clo] = 0
                p3[:, rlo:rhi, chi:] = 0
            else:
                ph.fill(0)
            for t, sh in taps:
                if first:
                    np.multiply(ph[:, sh:sh + L], wr[t, r0:r1], out=acc)
                    first = False
                else:
                    np.multiply(ph[:, sh:sh + L], wr[t, r0:r1], out=tmp)
                    np.add(acc, tmp, out=acc)
        o = acc.reshape(n, OH, PW)[:, :, :OW]
        if br is not None:
            np.add(o, br[r0:r1], out=out[r0:r1])
        else:
            out[r0:r1] = o
        if act is not None:
            act(out[r0:r1])

    _parallel(work, _chunks(R, per))
    return out.reshape(N, C, OH, OW)


# ----------------------------------------------------------------------------------------------- deconvolution
@impl("top.deconv")
def deconv(node, x, w, b, shape):
    return fused_relu(node, _deconv(node, x, w, b))


def _deconv(node, x, w, b):
    """ONNX ConvTranspose: filter [Cin, Cout/group, k...]; output = s*(in-1) + op + (k-1)*d + 1 - pads."""
    nsp = x.ndim - 2
    k, s, d, p, g = _conv_attrs(node.attrs, nsp, w)
    op = list(node.attrs["output_padding"]) or [0] * nsp
    x = np.asarray(x)
    w = np.asarray(w, dtype=x.dtype)
    N, C = x.shape[:2]
    sp = x.shape[2:]
    Cog = w.shape[1]
    Co = Cog * g
    Cg = C // g
    L = int(np.prod(sp))
    K = int(np.prod(k))
    # cols[n, g, (co, taps), l] = sum_ci w[g, ci, co, taps] * x[n, g, ci, l]
    wt = w.reshape(g, Cg, Cog * K).transpose(0, 2, 1)
    cols = _matmul(wt, x.reshape(N, g, Cg, L)).reshape((N, Co) + tuple(k) + tuple(sp))
    full = [s[i] * (sp[i] - 1) + (k[i] - 1) * d[i] + 1 + op[i] for i in range(nsp)]
    if nsp == 2 and list(k) == list(s) and list(d) == [1, 1] and not any(op):
        # taps do not overlap (the usual 2x upsampling): each output pixel is one tap of one input pixel, so the
        # scatter is a transpose (the same values as adding each tap to zeros)
        acc = cols.transpose(0, 1, 4, 2, 5, 3).reshape(N, Co, full[0], full[1])
    else:
        acc = np.zeros((N, Co) + tuple(full), x.dtype)
        for taps in np.ndindex(*k):
            idx = (slice(None), slice(None)) + tuple(
                slice(t * d[i], t * d[i] + (sp[i] - 1) * s[i] + 1, s[i]) for i, t in enumerate(taps))
            acc[idx] += cols[(slice(None), slice(None)) + taps]
    crop = (slice(None), slice(None)) + tuple(slice(p[i], full[i] - p[i + nsp]) for i in range(nsp))
    y = np.ascontiguousarray(acc[crop])
    if b is not None:
        y += np.asarray(b, x.dtype).reshape((Co,) + (1,) * nsp)
    return y


# ----------------------------------------------------------------------------------------------- pooling
def _pool_geometry(node, x):
    a = node.attrs
    nsp = x.ndim - 2
    k = list(a["kernel_shape"])
    s = list(a["strides"]) or [1] * nsp
    p = list(a["pads"]) or [0] * (2 * nsp)
    d = list(a["dilations"]) or [1] * nsp
    return k, s, p, d, bool(a["ceil_mode"])


def _is_global(x, k, s, p, d):
    return list(k) == list(x.shape[2:]) and not any(p) and all(v == 1 for v in d)


@impl("top.maxpool")
def maxpool(node, x, shape):
    k, s, p, d, ceil = _pool_geometry(node, x)
    if _is_global(x, k, s, p, d):
        return x.max(axis=tuple(range(2, x.ndim)), keepdims=True)
    return _window(x, k, s, p, d, ceil, "max", True)


@impl("top.avgpool")
def avgpool(node, x, shape):
    k, s, p, d, ceil = _pool_geometry(node, x)
    if _is_global(x, k, s, p, d):
        return x.mean(axis=tuple(range(2, x.ndim)), keepdims=True, dtype=x.dtype)
    return _window(x, k, s, p, d, ceil, "avg", bool(node.attrs["count_include_pad"]))


def _window(x, k, s, p, d, ceil, mode, include_pad):
    """Max or average over windows, by per-tap valid ranges (padding is never read)."""
    nsp = x.ndim - 2
    if nsp == 1:
        x2, k, s, p, d = _as2d(x, k, s, p, d)
        return _window(x2, k, s, p, d, ceil, mode, include_pad)[:, :, 0, :]
    if nsp != 2:
        raise NotImplementedError("pooling supports 1-D and 2-D inputs")
    N, C, H, W = x.shape
    OH = out_size(H, k[0], s[0], d[0], p[0], p[2], ceil)
    OW = out_size(W, k[1], s[1], d[1], p[1], p[3], ceil)
    R = N * C
    x3 = x.reshape(R, H, W)
    rh = [_tap_range(H, OH, s[0], i * d[0] - p[0]) for i in range(k[0])]
    rw = [_tap_range(W, OW, s[1], j * d[1] - p[1]) for j in range(k[1])]
    out = np.empty((R, OH, OW), x.dtype)
    if mode == "max":
        out.fill(-np.inf if np.issubdtype(x.dtype, np.floating) else np.iinfo(x.dtype).min)
    else:
        out.fill(0)
    for a0, a1, i0 in rh:
        for c0, c1, j0 in rw:
            if a1 <= a0 or c1 <= c0:
                continue
            xv = x3[:, i0:i0 + (a1 - a0 - 1) * s[0] + 1:s[0], j0:j0 + (c1 - c0 - 1) * s[1] + 1:s[1]]
            ov = out[:, a0:a1, c0:c1]
            if mode == "max":
                np.maximum(ov, xv, out=ov)
            else:
                ov += xv
    if mode == "avg":
        # divisor per output: taps inside the input, or inside input + explicit pads (count_include_pad)
        def counts(n, o, kk, ss, dd, pb, pe):
            c = np.zeros(o, x.dtype)
            lo_lim, hi_lim = (-pb, n + pe) if include_pad else (0, n)
            for t in range(kk):
                pos = np.arange(o) * ss + t * dd - pb
                c += (pos >= lo_lim) & (pos < hi_lim)
            return c
        div = (counts(H, OH, k[0], s[0], d[0], p[0], p[2])[:, None] *
               counts(W, OW, k[1], s[1], d[1], p[1], p[3])[None, :])
        out /= np.maximum(div, 1)
    return out.reshape(N, C, OH, OW)


# ----------------------------------------------------------------------------------------------- per-channel ops
def _per_channel(v, ndim):
    v = np.asarray(v)
    return v.reshape((1, -1) + (1,) * (ndim - 2)) if v.ndim == 1 else v


@impl("top.scale")
def scale(node, x, sc, bias, shape):
    y = x * _per_channel(sc, x.ndim).astype(x.dtype, copy=False)
    y += _per_channel(bias, x.ndim).astype(x.dtype, copy=False)
    return y


@impl("top.prelu")
def prelu(node, x, slope, shape):
    slope = np.asarray(slope, x.dtype)
    return np.where(x >= 0, x, x * slope).astype(x.dtype, copy=False)


@impl("top.group_norm")
def group_norm(node, x, sc, bias, shape):
    G = int(node.attrs["num_groups"])
    eps = F32(node.attrs["eps"]) if x.dtype == F32 else node.attrs["eps"]
    N, C = x.shape[:2]
    xg = x.reshape(N, G, -1)
    mean = xg.mean(axis=2, keepdims=True, dtype=x.dtype)
    dlt = xg - mean
    var = np.mean(dlt * dlt, axis=2, keepdims=True, dtype=x.dtype)
    dlt /= np.sqrt(var + eps)
    y = dlt.reshape(x.shape)
    if sc is not None:
        y *= _per_channel(sc, x.ndim).astype(x.dtype, copy=False)
    if bias is not None:
        y += _per_channel(bias, x.ndim).astype(x.dtype, copy=False)
    return y


# ----------------------------------------------------------------------------------------------- data movement
@impl("top.pad")
def pad(node, x, shape):
    pads = list(node.attrs["pads"])
    r = x.ndim
    mode = node.attrs["mode"]
    # negative pads crop
    crop = tuple(slice(max(0, -pads[i]), x.shape[i] - max(0, -pads[i + r])) for i in range(r))
    x = x[crop]
    width = [(max(0, pads[i]), max(0, pads[i + r])) for i in range(r)]
    if mode == "constant":
        return np.pad(x, width, mode="constant", constant_values=np.asarray(node.attrs["value"]).astype(x.dtype))
    if mode == "reflect":
        return np.pad(x, width, mode="reflect")
    if mode == "edge":
        return np.pad(x, width, mode="edge")
    if mode == "wrap":
        return np.pad(x, width, mode="wrap")
    raise ValueError(f"unknown pad mode {mode!r}")


@impl("top.depth_to_space")
def depth_to_space(node, x, shape):
    bs = int(node.attrs["blocksize"])
    N, C, H, W = x.shape
    c = C // (bs * bs)
    if node.attrs["mode"] == "DCR":
        y = x.reshape(N, bs, bs, c, H, W).transpose(0, 3, 4, 1, 5, 2)
    else:
        y = x.reshape(N, c, bs, bs, H, W).transpose(0, 1, 4, 2, 5, 3)
    return np.ascontiguousarray(y).reshape(N, c, H * bs, W * bs)


@impl("top.space_to_depth")
def space_to_depth(node, x, shape):
    bs = int(node.attrs["blocksize"])
    N, C, H, W = x.shape
    y = x.reshape(N, C, H // bs, bs, W // bs, bs).transpose(0, 3, 5, 1, 2, 4)
    return np.ascontiguousarray(y).reshape(N, C * bs * bs, H // bs, W // bs)


# ----------------------------------------------------------------------------------------------- resize
def _source_coords(mode: str, out_n: int, in_n: int, scale: float) -> np.ndarray:
    """Source coordinate of every output index (ONNX coordinate_transformation_mode), in float32 like ORT."""
    xo = np.arange(out_n, dtype=F32)
    sc = F32(scale)
    if mode == "half_pixel":
        return (xo + F32(0.5)) / sc - F32(0.5)
    if mode == "pytorch_half_pixel":
        return (xo + F32(0.5)) / sc - F32(0.5) if out_n > 1 else np.zeros(out_n, F32)
    if mode == "align_corners":
        return xo * F32(in_n - 1) / F32(out_n - 1) if out_n > 1 else np.zeros(out_n, F32)
    if mode == "asymmetric":
        return xo / sc
    if mode == "half_pixel_symmetric":
        adj = F32(out_n) / (sc * F32(in_n))
        center = F32(in_n) / F32(2)
        offset = center * (F32(1) - adj)
        return offset + (xo + F32(0.5)) / sc - F32(0.5)
    raise ValueError(f"unsupported coordinate transformation {mode!r}")


def _nearest_index(xs: np.ndarray, mode: str, downsample: bool) -> np.ndarray:
    if mode == "round_prefer_floor":
        i = np.where(xs - np.floor(xs) == F32(0.5), np.floor(xs), np.round(xs))
    elif mode == "round_prefer_ceil":
        i = np.where(xs - np.floor(xs) == F32(0.5), np.ceil(xs), np.round(xs))
    elif mode == "floor":
        i = np.floor(xs)
    elif mode == "ceil":
        i = np.ceil(xs)
    elif mode == "simple":   # Upsample / Resize-10: truncate, or ceil when downsampling
        i = np.ceil(xs) if downsample else np.trunc(xs)
    else:
        raise ValueError(f"unsupported nearest mode {mode!r}")
    return i.astype(np.int64)


def _cubic_weights(t: np.ndarray, a: float) -> np.ndarray:
    """Weights of taps -1, 0, 1, 2 around floor(x) for fractional part t (Keys kernel with coefficient a)."""
    a = F32(a)
    def w_near(z):
        return ((a + 2) * z - (a + 3)) * z * z + 1
    def w_far(z):
        return ((a * z - 5 * a) * z + 8 * a) * z - 4 * a
    return np.stack([w_far(t + 1), w_near(t), w_near(1 - t), w_far(2 - t)], axis=1).astype(F32)


@impl("top.resize")
def resize(node, x, shape):
    """ONNX Resize, separably one axis at a time (exact for nearest; linear/cubic are separable products)."""
    a = node.attrs
    mode, cmode, nmode = a["mode"], a["coord_mode"], a["nearest_mode"]
    scales = list(a["scales"])
    excl = bool(a["exclude_outside"])
    y = x
    for ax in range(x.ndim):
        in_n = x.shape[ax]
        out_n = int(shape[ax]) if ax > 0 else in_n
        sc = float(scales[ax])
        if out_n == in_n and sc == 1.0:
            continue
        y = _resize_axis(y, ax, in_n, out_n, sc, mode, cmode, nmode, float(a["cubic_coeff"]), excl)
    return np.ascontiguousarray(y) if y is not x else y.copy()


def _resize_axis(y, ax, in_n, out_n, sc, mode, cmode, nmode, cubic_a, excl):
    xs = _source_coords(cmode, out_n, in_n, sc)
    if mode == "nearest":
        if cmode == "asymmetric" and nmode in ("floor", "simple") and sc == int(sc) and out_n == in_n * int(sc):
            return np.repeat(y, int(sc), axis=ax)
        idx = np.clip(_nearest_index(xs, nmode, sc < 1), 0, in_n - 1)
        return np.take(y, idx, axis=ax)
    shp = [1] * y.ndim
    shp[ax] = out_n
    if mode == "linear":
        xs = np.clip(xs, 0, in_n - 1)
        i0 = np.floor(xs).astype(np.int64)
        i1 = np.minimum(i0 + 1, in_n - 1)
        t = (xs - i0.astype(F32)).astype(F32)
        w1 = t.reshape(shp)
        w0 = (F32(1) - t).reshape(shp)
        out = np.take(y, i0, axis=ax) * w0
        out += np.take(y, i1, axis=ax) * w1
        return out
    if mode == "cubic":
        fl = np.floor(xs)
        t = (xs - fl).astype(F32)
        base = fl.astype(np.int64)
        wts = _cubic_weights(t, cubic_a)
        idx = base[:, None] + np.arange(-1, 3)[None, :]
        if excl:
            inside = (idx >= 0) & (idx < in_n)
            wts = np.where(inside, wts, F32(0))
            wts = wts / wts.sum(axis=1, keepdims=True)
        idx = np.clip(idx, 0, in_n - 1)
        out = None
        for tap in range(4):
            term = np.take(y, idx[:, tap], axis=ax) * wts[:, tap].astype(y.dtype).reshape(shp)
            out = term if out is None else out + term
        return out
    raise ValueError(f"unsupported resize mode {mode!r}")
