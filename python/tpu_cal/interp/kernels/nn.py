"""Convolution-family kernels: conv, deconv, pools, scale, prelu, group_norm, pad, resize, depth/space moves.

Everything stays float32 (no float64 temporaries on activations). Layout is NCHW as the graph declares; 1-D ops
run as 2-D with a unit height. Performance notes (2 cores, numpy + OpenBLAS):
- pointwise conv is one batched matmul W @ x[n] per sample (no im2col);
- general conv is im2col through an `as_strided` window view, copied per chunk of samples, then one matmul;
- depthwise conv picks, per layer, the cheaper of two exact methods (see `_depthwise`): shifted multiply-adds on
  flattened planes (large planes) or a per-channel Toeplitz matmul along the width (small planes, where the
  multiply-add inner loops would be short).
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..core import impl

F32 = np.float32
_CHUNK_BYTES = 48 << 20        # bound on im2col / temporary buffers per chunk


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


_POOL = None


def _pool() -> ThreadPoolExecutor | None:
    """A small worker pool for chunked elementwise loops (numpy releases the GIL inside ufunc loops)."""
    global _POOL
    n = min(os.cpu_count() or 1, 4)
    if n <= 1:
        return None
    if _POOL is None:
        _POOL = ThreadPoolExecutor(n, thread_name_prefix="tpu_cal_kernel")
    return _POOL


def _parallel(fn, chunks):
    """Runs fn(chunk) for every chunk, spread over the worker pool in contiguous runs."""
    pool = _pool()
    if pool is None or len(chunks) < 4:
        for c in chunks:
            fn(c)
        return
    n = pool._max_workers
    per = -(-len(chunks) // n)
    runs = [chunks[i:i + per] for i in range(0, len(chunks), per)]
    list(pool.map(lambda r: [fn(c) for c in r], runs))


def _chunks(total: int, per: int):
    per = max(1, int(per))
    return [(a, min(total, a + per)) for a in range(0, total, per)]


# ----------------------------------------------------------------------------------------------- convolution
@impl("top.conv", "tpu.conv")
def conv(node, x, w, b, shape):
    a = node.attrs
    nsp = x.ndim - 2
    k = list(a["kernel_shape"]) or list(w.shape[2:])
    s = list(a["strides"]) or [1] * nsp
    d = list(a["dilations"]) or [1] * nsp
    p = list(a["pads"]) or [0] * (2 * nsp)
    g = int(a["group"])
    x = np.asarray(x)
    w = np.asarray(w, dtype=x.dtype)
    if b is not None:
        b = np.asarray(b, dtype=x.dtype)
    if nsp == 1:
        x2, k, s, p, d = _as2d(x, k, s, p, d)
        y = _conv2d(x2, w[:, :, None, :], b, k, s, p, d, g)
        return y[:, :, 0, :]
    if nsp == 2:
        return _conv2d(x, w, b, k, s, p, d, g)
    return _conv_nd(x, w, b, k, s, p, d, g)


def _conv2d(x, w, b, k, s, p, d, g):
    N, C, H, W = x.shape
    Co = w.shape[0]
    OH = out_size(H, k[0], s[0], d[0], p[0], p[2])
    OW = out_size(W, k[1], s[1], d[1], p[1], p[3])
    if k == [1, 1] and p == [0, 0, 0, 0] and g == 1:
        return _pointwise(x[:, :, ::s[0], ::s[1]][:, :, :OH, :OW], w.reshape(Co, C), b)
    if g == C and Co == C and g > 1:
        return _depthwise(x, w.reshape(C, k[0], k[1]), b, k, s, p, d, OH, OW)
    return _im2col_conv(x, w, b, k, s, p, d, g, OH, OW)


def _pointwise(x, w2, b):
    N, C, H, W = x.shape
    Co = w2.shape[0]
    xr = x.reshape(N, C, H * W) if x.flags.c_contiguous else np.ascontiguousarray(x).reshape(N, C, H * W)
    out = np.empty((N, Co, H * W), x.dtype)
    np.matmul(w2, xr, out=out)
    if b is not None:
        out += b[:, None]
    return out.reshape(N, Co, H, W)


def _pad_spatial(x, p):
    """Zero-pads the two spatial axes by [top, left, bottom, right] (a copy only when needed)."""
    if not any(p):
        return x
    N, C, H, W = x.shape
    xp = np.zeros((N, C, H + p[0] + p[2], W + p[1] + p[3]), x.dtype)
    xp[:, :, p[0]:p[0] + H, p[1]:p[1] + W] = x
    return xp


def _im2col_conv(x, w, b, k, s, p, d, g, OH, OW):
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
    per = max(1, _CHUNK_BYTES // max(1, C * k[0] * k[1] * OH * OW * x.itemsize))
    for n0, n1 in _chunks(N, per):
        cols = win[n0:n1].reshape(n1 - n0, g, K, OH * OW)     # the copy: im2col of this chunk
        o = out[n0:n1].reshape(n1 - n0, g, Cog, OH * OW)
        np.matmul(wg, cols, out=o)
        if b is not None:
            out[n0:n1] += b[:, None]
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
    y = np.matmul(w.reshape(g, Cog, -1), cols).reshape(N, Co, L)
    if b is not None:
        y += b[:, None]
    return y.reshape((N, Co) + tuple(outs))


# ----------------------------------------------------------------------------------------------- depthwise
def _depthwise(x, w, b, k, s, p, d, OH, OW):
    """Depthwise 2-D convolution (one filter per channel), exact in float32.

    Two methods, chosen per layer by a cost model measured on numpy + OpenBLAS:
    - `_dw_toeplitz`: for each channel, out[n, oh, :] = sum_i x[n, oh*s + i*d - p, :] @ T[c, i] where T[c, i] is
      the (W x OW) banded matrix of filter row i. One batched matmul per filter row; BLAS speed, W/k times the
      arithmetic. Wins when planes are narrow (late layers: 7x7, 14x14, 28x28).
    - `_dw_shift`: shifted multiply-adds accumulated in place on flattened, zero-padded planes, chunked so the
      working set stays in cache, spread over the worker pool. Wins on wide planes.
    """
    N, C, H, W = x.shape
    kk = k[0] * k[1]
    shift_cost = N * C * OH * (W + p[1] + p[3]) * kk * 0.45      # ns: two ufunc passes per tap
    toe_cost = N * C * OH * OW * k[0] * W * 0.05 + N * C * H * W * 0.5  # ns: BLAS flops + the copies
    if toe_cost < shift_cost:
        return _dw_toeplitz(x, w, b, k, s, p, d, OH, OW)
    return _dw_shift(x, w, b, k, s, p, d, OH, OW)


def _dw_toeplitz(x, w, b, k, s, p, d, OH, OW):
    N, C, H, W = x.shape
    # T[c, i, col, ow] = w[c, i, j] where col = ow*s1 + j*d1 - p_left lies inside the row
    T = np.zeros((C, k[0], W, OW), x.dtype)
    for j in range(k[1]):
        for ow in range(OW):
            col = ow * s[1] + j * d[1] - p[1]
            if 0 <= col < W:
                T[:, :, col, ow] += w[:, :, j]
    # rows[c, n, oh, i, :] = x[n, c, oh*s0 + i*d0 - p_top, :] (zero outside): one strided copy per filter row
    A = np.empty((C, N, OH, k[0], W), x.dtype)
    xt = x.transpose(1, 0, 2, 3)
    for i in range(k[0]):
        lo, hi, r0 = _tap_range(H, OH, s[0], i * d[0] - p[0])
        if lo > 0:
            A[:, :, :lo, i] = 0
        if hi < OH:
            A[:, :, hi:, i] = 0
        if hi > lo:
            A[:, :, lo:hi, i] = xt[:, :, r0:r0 + (hi - lo - 1) * s[0] + 1:s[0]]
    Y = np.matmul(A.reshape(C, N * OH, k[0] * W), T.reshape(C, k[0] * W, OW))
    out = np.empty((N, C, OH, OW), x.dtype)
    Yt = Y.reshape(C, N, OH, OW).transpose(1, 0, 2, 3)
    if b is not None:
        np.add(Yt, b[:, None, None], out=out)
    else:
        np.copyto(out, Yt)
    return out


def _dw_shift(x, w, b, k, s, p, d, OH, OW):
    N, C, H, W = x.shape
    R = N * C
    if s == [1, 1]:
        # flattened zero-padded planes: tap (i, j) is a shift by i*d0*Wp + j*d1 of the whole plane, so every
        # multiply-add runs over one long contiguous row; outputs land on a Wp-wide grid, cropped at the end
        Hp, Wp = H + p[0] + p[2], W + p[1] + p[3]
        xp = np.zeros((R, Hp * Wp + (k[1] - 1) * d[1] + Wp), x.dtype)
        xp[:, :Hp * Wp].reshape(R, Hp, Wp)[:, p[0]:p[0] + H, p[1]:p[1] + W] = x.reshape(R, H, W)
        L = OH * Wp
        shifts = [(i * d[0] * Wp + j * d[1], i, j) for i in range(k[0]) for j in range(k[1])]
        out = np.empty((R, OH, OW), x.dtype)
        wr = w.reshape(C, k[0], k[1])
        per = max(1, (96 << 10) // (L * x.itemsize))

        def work(c):
            r0, r1 = c
            rows = np.arange(r0, r1) % C
            wc = wr[rows]                       # (rows, k0, k1)
            acc = np.empty((r1 - r0, L), x.dtype)
            tmp = np.empty((r1 - r0, L), x.dtype)
            xs = xp[r0:r1]
            first = True
            for sh, i, j in shifts:
                wv = wc[:, i, j, None]
                if first:
                    np.multiply(xs[:, sh:sh + L], wv, out=acc)
                    first = False
                else:
                    np.multiply(xs[:, sh:sh + L], wv, out=tmp)
                    acc += tmp
            o = acc.reshape(r1 - r0, OH, Wp)[:, :, :OW]
            if b is not None:
                np.add(o, b[rows, None, None], out=out[r0:r1])
            else:
                out[r0:r1] = o

        _parallel(work, _chunks(R, per))
        return out.reshape(N, C, OH, OW)
    # strided: per-tap ranges on the unpadded planes (padding never read)
    x3 = x.reshape(R, H, W)
    out = np.empty((R, OH, OW), x.dtype)
    wr = w.reshape(C, k[0], k[1])
    rh = [_tap_range(H, OH, s[0], i * d[0] - p[0]) for i in range(k[0])]
    rw = [_tap_range(W, OW, s[1], j * d[1] - p[1]) for j in range(k[1])]
    per = max(1, (32 << 10) // max(1, OH * OW))

    def work_s(c):
        r0, r1 = c
        rows = np.arange(r0, r1) % C
        o = out[r0:r1]
        if b is not None:
            o[...] = b[rows, None, None]
        else:
            o[...] = 0
        tmp = np.empty((r1 - r0, OH, OW), x.dtype)
        xs = x3[r0:r1]
        for i, (a0, a1, i0) in enumerate(rh):
            for j, (c0, c1, j0) in enumerate(rw):
                if a1 <= a0 or c1 <= c0:
                    continue
                xv = xs[:, i0:i0 + (a1 - a0 - 1) * s[0] + 1:s[0], j0:j0 + (c1 - c0 - 1) * s[1] + 1:s[1]]
                t = tmp[:, :a1 - a0, :c1 - c0]
                np.multiply(xv, wr[rows, i, j, None, None], out=t)
                ov = o[:, a0:a1, c0:c1]
                ov += t

    _parallel(work_s, _chunks(R, per))
    return out.reshape(N, C, OH, OW)


# ----------------------------------------------------------------------------------------------- deconvolution
@impl("top.deconv", "tpu.deconv")
def deconv(node, x, w, b, shape):
    """ONNX ConvTranspose: filter [Cin, Cout/group, k...]; output = s*(in-1) + op + (k-1)*d + 1 - pads."""
    a = node.attrs
    nsp = x.ndim - 2
    k = list(a["kernel_shape"]) or list(w.shape[2:])
    s = list(a["strides"]) or [1] * nsp
    d = list(a["dilations"]) or [1] * nsp
    p = list(a["pads"]) or [0] * (2 * nsp)
    op = list(a["output_padding"]) or [0] * nsp
    g = int(a["group"])
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
    cols = np.matmul(wt, x.reshape(N, g, Cg, L)).reshape((N, Co) + tuple(k) + tuple(sp))
    full = [s[i] * (sp[i] - 1) + (k[i] - 1) * d[i] + 1 + op[i] for i in range(nsp)]
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


@impl("top.maxpool", "tpu.maxpool")
def maxpool(node, x, shape):
    k, s, p, d, ceil = _pool_geometry(node, x)
    if _is_global(x, k, s, p, d):
        return x.max(axis=tuple(range(2, x.ndim)), keepdims=True)
    return _window(x, k, s, p, d, ceil, "max", True)


@impl("top.avgpool", "tpu.avgpool")
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
        div = counts(H, OH, k[0], s[0], d[0], p[0], p[2])[:, None] * counts(W, OW, k[1], s[1], d[1], p[1], p[3])[None, :]
        out /= np.maximum(div, 1)
    return out.reshape(N, C, OH, OW)


# ----------------------------------------------------------------------------------------------- per-channel ops
def _per_channel(v, ndim):
    v = np.asarray(v)
    return v.reshape((1, -1) + (1,) * (ndim - 2)) if v.ndim == 1 else v


@impl("top.scale", "tpu.scale")
def scale(node, x, sc, bias, shape):
    y = x * _per_channel(sc, x.ndim).astype(x.dtype, copy=False)
    y += _per_channel(bias, x.ndim).astype(x.dtype, copy=False)
    return y


@impl("top.prelu", "tpu.prelu")
def prelu(node, x, slope, shape):
    slope = np.asarray(slope, x.dtype)
    return np.where(x >= 0, x, x * slope).astype(x.dtype, copy=False)


@impl("top.group_norm", "tpu.group_norm")
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
@impl("top.pad", "tpu.pad")
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


@impl("top.depth_to_space", "tpu.depth_to_space")
def depth_to_space(node, x, shape):
    bs = int(node.attrs["blocksize"])
    N, C, H, W = x.shape
    c = C // (bs * bs)
    if node.attrs["mode"] == "DCR":
        y = x.reshape(N, bs, bs, c, H, W).transpose(0, 3, 4, 1, 5, 2)
    else:
        y = x.reshape(N, c, bs, bs, H, W).transpose(0, 1, 4, 2, 5, 3)
    return np.ascontiguousarray(y).reshape(N, c, H * bs, W * bs)


@impl("top.space_to_depth", "tpu.space_to_depth")
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


@impl("top.resize", "tpu.resize")
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
