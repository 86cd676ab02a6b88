/* Depthwise 2-D convolution for tpu_cal.interp.kernels.nn (float32, NCHW), loaded with ctypes.
 *
 * y[r, oh, ow] = sum over taps (i, j) in row-major order of w[c, i, j] * x[r, oh*sh + i*dh - pt, ow*sw + j*dw - pl]
 * (zero outside the plane), then + b[c]; r = n*C + c. Each output is accumulated in float32 from +0, tap by tap
 * in that order, then the bias added, as the numpy path does. Planes [r0, r1) per call, so callers spread planes
 * over threads (ctypes releases the GIL during the call). Built without fast-math or FMA contraction.
 *
 * Each plane is first copied, zero-padded and split into `sw` column phases, into a buffer that stays in cache;
 * every tap then reads a contiguous run of it, so a block of output vectors is accumulated in registers over all
 * the taps and stored once (the vector width is the build's: 4, 8 or 16 floats; QW, the buffer's row length, is
 * a whole number of vectors so stride 2 deinterleaves a row with vector shuffles). The padding adds products
 * w * 0 = +-0 that the plain sum skips; adding +-0 never changes a sum that started from +0 (it is never -0),
 * so the results are the same bits, except where a weight is Inf or NaN (Inf * 0 is NaN): such channels take the
 * plain loop over the taps that lie inside the plane.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vector.h"
#define UB 4            /* output vectors accumulated together over the taps (registers) */

#if VL == 16
#define EVEN ((vi){0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30})
#elif VL == 8
#define EVEN ((vi){0, 2, 4, 6, 8, 10, 12, 14})
#else
#define EVEN ((vi){0, 2, 4, 6})
#endif

/* the plain loop: taps outside the plane skipped (channels with non-finite weights) */
static void plane_plain(const float *xp, const float *wc, const float *b, int64_t c, float *yp, int64_t H,
                        int64_t W, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t dh, int64_t dw,
                        int64_t pt, int64_t pl, int64_t OH, int64_t OW)
{
    int64_t oh, i, j, ow;
    for (oh = 0; oh < OH; oh++) {
        float *yr = yp + oh * OW;
        memset(yr, 0, (size_t)OW * sizeof *yr);
        for (i = 0; i < kh; i++) {
            const int64_t ih = oh * sh + i * dh - pt;
            if (ih < 0 || ih >= H)
                continue;
            const float *xr = xp + ih * W;
            for (j = 0; j < kw; j++) {
                const float wv = wc[i * kw + j];
                const int64_t off = j * dw - pl;
                int64_t lo = off < 0 ? (-off + sw - 1) / sw : 0;
                int64_t hi = W - 1 - off < 0 ? 0 : (W - 1 - off) / sw + 1;
                if (hi > OW)
                    hi = OW;
                for (ow = lo; ow < hi; ow++)
                    yr[ow] += wv * xr[ow * sw + off];
            }
        }
        if (b)
            for (ow = 0; ow < OW; ow++)
                yr[ow] += b[c];
    }
}

/* nv (1..UB, a constant after inlining) output vectors from column ow0 of output row `row0` of the phase
 * buffer: acc = +0, + w * x for every tap in order, + bias; stored to out (n floats, n <= nv * VL) */
static inline __attribute__((always_inline)) void
block(const float *q, const int64_t *toff, const float *wc, int64_t kk, const float *bias, float *out, int64_t n,
      const int nv)
{
    vf acc[UB];
    int64_t t;
    int u;
    for (u = 0; u < nv; u++)
        acc[u] = (vf){0};
    for (t = 0; t < kk; t++) {
        const float *s = q + toff[t];
        const vf wv = (vf){0} + wc[t];
        for (u = 0; u < nv; u++)
            acc[u] += wv * loadv(s + u * VL);
    }
    if (bias)
        for (u = 0; u < nv; u++)
            acc[u] += *bias;
    if (n == nv * VL) {
        memcpy(out, acc, (size_t)n * sizeof(float));
    } else {
        float tmp[UB * VL];
        memcpy(tmp, acc, sizeof(vf) * nv);
        memcpy(out, tmp, (size_t)n * sizeof(float));
    }
}

/* planes no wider than a vector: nr (1..UR, a constant after inlining) consecutive output rows, one vector each,
 * read from q on, rows `rs` floats apart in the phase buffer, accumulated together over the taps (independent add
 * chains, where one row alone waits on its own adds); the first n floats of each stored to out, rows n apart */
#define UR 8
static inline __attribute__((always_inline)) void
rows(const float *q, int64_t rs, const int64_t *toff, const float *wc, int64_t kk, const float *bias, float *out,
     int64_t n, const int nr)
{
    vf acc[UR];
    int64_t t;
    int u;
    for (u = 0; u < nr; u++)
        acc[u] = (vf){0};
    for (t = 0; t < kk; t++) {
        const float *s = q + toff[t];
        const vf wv = (vf){0} + wc[t];
        for (u = 0; u < nr; u++)
            acc[u] += wv * loadv(s + u * rs);
    }
    for (u = 0; u < nr; u++) {
        float tmp[VL];
        if (bias)
            acc[u] += *bias;
        memcpy(tmp, &acc[u], sizeof tmp);
        memcpy(out + u * n, tmp, (size_t)n * sizeof(float));
    }
}

void tc_dwconv2d(const float *x, const float *w, const float *b, float *y, int64_t r0, int64_t r1, int64_t C,
                 int64_t H, int64_t W, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t dh, int64_t dw,
                 int64_t pt, int64_t pl, int64_t OH, int64_t OW)
{
    /* phase buffer: q[ph][row][col] = x[row - pt, col*sw + ph - pl] (0 outside), rows 0..PR-1 of the padded
     * plane that any tap reads, QW columns: the widest tap offset plus whole vectors past OW (read, not used) */
    const int64_t PR = (OH - 1) * sh + (kh - 1) * dh + 1, kk = kh * kw;
    const int64_t OWv = (OW + VL - 1) / VL * VL, QW = ((kw - 1) * dw / sw + OWv + VL - 1) / VL * VL;
    float *q = malloc((size_t)(sw * PR * QW + 2 * QW + 2 * VL) * sizeof *q), *pad = q + sw * PR * QW;
    int64_t *toff = malloc((size_t)kk * sizeof *toff);
    int64_t r, i, j, row, ph, col, oh, ow;
    if (!q || !toff) {                  /* no memory for the buffer: the plain loop */
        for (r = r0; r < r1; r++)
            plane_plain(x + r * H * W, w + (r % C) * kk, b, r % C, y + r * OH * OW, H, W, kh, kw, sh, sw, dh, dw,
                        pt, pl, OH, OW);
        free(q);
        free(toff);
        return;
    }
    for (i = 0; i < kh; i++)            /* where tap (i, j) reads in the buffer, from output row 0, column 0 */
        for (j = 0; j < kw; j++)
            toff[i * kw + j] = ((j * dw) % sw * PR + i * dh) * QW + (j * dw) / sw;
    for (r = r0; r < r1; r++) {
        const int64_t c = r % C;
        const float *xp = x + r * H * W, *wc = w + c * kk, *bias = b ? b + c : NULL;
        float *yp = y + r * OH * OW;
        int finite = 1;
        for (i = 0; i < kk; i++)
            finite &= isfinite(wc[i]) != 0;
        if (!finite) {
            plane_plain(xp, wc, b, c, yp, H, W, kh, kw, sh, sw, dh, dw, pt, pl, OH, OW);
            continue;
        }
        if (sw == 2) {                  /* both phases of a row at once: a zero-bordered copy, deinterleaved */
            for (row = 0; row < PR; row++) {
                float *q0 = q + row * QW, *q1 = q + (PR + row) * QW;
                const int64_t ih = row - pt;
                if (ih < 0 || ih >= H) {
                    memset(q0, 0, (size_t)QW * sizeof *q0);
                    memset(q1, 0, (size_t)QW * sizeof *q1);
                    continue;
                }
                const int64_t lo = pl < 2 * QW ? pl : 2 * QW, n = W < 2 * QW - lo ? W : 2 * QW - lo;
                memset(pad, 0, (size_t)lo * sizeof *pad);
                memcpy(pad + lo, xp + ih * W, (size_t)n * sizeof *pad);
                memset(pad + lo + n, 0, (size_t)(2 * QW + 2 * VL - lo - n) * sizeof *pad);
                for (col = 0; col < QW; col += VL) {
                    const vf a = loadv(pad + 2 * col), bb = loadv(pad + 2 * col + VL);
                    const vf e = __builtin_shuffle(a, bb, EVEN), o = __builtin_shuffle(a, bb, EVEN + 1);
                    memcpy(q0 + col, &e, sizeof e);
                    memcpy(q1 + col, &o, sizeof o);
                }
            }
        } else
        for (ph = 0; ph < sw; ph++)
            for (row = 0; row < PR; row++) {
                float *qr = q + (ph * PR + row) * QW;
                const int64_t ih = row - pt;
                if (ih < 0 || ih >= H) {
                    memset(qr, 0, (size_t)QW * sizeof *qr);
                    continue;
                }
                const float *xr = xp + ih * W;
                if (sw == 1) {          /* a copy between zero borders */
                    int64_t lo = pl < QW ? pl : QW, n = W < QW - lo ? W : QW - lo;
                    memset(qr, 0, (size_t)lo * sizeof *qr);
                    memcpy(qr + lo, xr, (size_t)n * sizeof *qr);
                    memset(qr + lo + n, 0, (size_t)(QW - lo - n) * sizeof *qr);
                } else {                /* columns clo..chi-1 read the row at (col*sw + ph - pl); zeros around */
                    const int64_t off = ph - pl;
                    int64_t clo = off < 0 ? (-off + sw - 1) / sw : 0, chi = W - 1 - off < 0 ? 0 : (W - 1 - off) / sw + 1;
                    chi = chi < QW ? chi : QW;
                    clo = clo < chi ? clo : chi;
                    memset(qr, 0, (size_t)clo * sizeof *qr);
                    const float *xs = xr + off;
                    for (col = clo; col < chi; col++)
                        qr[col] = xs[col * sw];
                    memset(qr + chi, 0, (size_t)(QW - chi) * sizeof *qr);
                }
            }
        if (OW <= VL) {                 /* narrow planes (7x7, 14x14): rows side by side */
            for (oh = 0; oh + UR <= OH; oh += UR)
                rows(q + oh * sh * QW, sh * QW, toff, wc, kk, bias, yp + oh * OW, OW, UR);
            switch (OH - oh) {
            case 0: break;
            case 1: rows(q + oh * sh * QW, sh * QW, toff, wc, kk, bias, yp + oh * OW, OW, 1); break;
            case 2: rows(q + oh * sh * QW, sh * QW, toff, wc, kk, bias, yp + oh * OW, OW, 2); break;
            case 3: rows(q + oh * sh * QW, sh * QW, toff, wc, kk, bias, yp + oh * OW, OW, 3); break;
            case 4: rows(q + oh * sh * QW, sh * QW, toff, wc, kk, bias, yp + oh * OW, OW, 4); break;
            case 5: rows(q + oh * sh * QW, sh * QW, toff, wc, kk, bias, yp + oh * OW, OW, 5); break;
            case 6: rows(q + oh * sh * QW, sh * QW, toff, wc, kk, bias, yp + oh * OW, OW, 6); break;
            default: rows(q + oh * sh * QW, sh * QW, toff, wc, kk, bias, yp + oh * OW, OW, 7); break;
            }
            continue;
        }
        for (oh = 0; oh < OH; oh++) {
            const float *qo = q + oh * sh * QW;
            float *yr = yp + oh * OW;
            for (ow = 0; ow + UB * VL <= OW; ow += UB * VL)
                block(qo + ow, toff, wc, kk, bias, yr + ow, UB * VL, UB);
            if (ow < OW) {
                const int64_t n = OW - ow;
                switch ((n + VL - 1) / VL) {
                case 1: block(qo + ow, toff, wc, kk, bias, yr + ow, n, 1); break;
                case 2: block(qo + ow, toff, wc, kk, bias, yr + ow, n, 2); break;
                case 3: block(qo + ow, toff, wc, kk, bias, yr + ow, n, 3); break;
                default: block(qo + ow, toff, wc, kk, bias, yr + ow, n, 4); break;
                }
            }
        }
    }
    free(q);
    free(toff);
}
