/* Depthwise 2-D convolution for tpu_cal.interp.kernels.nn (float32, NCHW), loaded with ctypes.
 *
 * y[r, oh, ow] = sum over taps (i, j) in row-major order of w[c, i, j] * x[r, oh*sh + i*dh - pt, ow*sw + j*dw - pl]
 * (zero outside the plane), then + b[c]; r = n*C + c. Each output row is accumulated in float32 tap by tap, as
 * the numpy path does; the inner loop runs over a contiguous output row (and a contiguous input row when the
 * stride is 1), which the compiler vectorizes. Planes [r0, r1) per call, so callers spread planes over threads
 * (ctypes releases the GIL during the call). Built with the flags of stats_kernel.c (no fast-math, no FMA).
 */
#include <stdint.h>
#include <string.h>

void tc_dwconv2d(const float *x, const float *w, const float *b, float *y, int64_t r0, int64_t r1, int64_t C,
                 int64_t H, int64_t W, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t dh, int64_t dw,
                 int64_t pt, int64_t pl, int64_t OH, int64_t OW)
{
    int64_t r, oh, i, j, ow;
    for (r = r0; r < r1; r++) {
        const int64_t c = r % C;
        const float *xp = x + r * H * W, *wc = w + c * kh * kw;
        float *yp = y + r * OH * OW;
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
                    /* outputs whose input column ow*sw + off lies inside [0, W) */
                    int64_t lo = off < 0 ? (-off + sw - 1) / sw : 0;
                    int64_t hi = W - 1 - off < 0 ? 0 : (W - 1 - off) / sw + 1;
                    if (hi > OW)
                        hi = OW;
                    if (sw == 1) {
                        const float *xs = xr + off;
                        for (ow = lo; ow < hi; ow++)
                            yr[ow] += wv * xs[ow];
                    } else {
                        for (ow = lo; ow < hi; ow++)
                            yr[ow] += wv * xr[ow * sw + off];
                    }
                }
            }
            if (b) {
                const float bv = b[c];
                for (ow = 0; ow < OW; ow++)
                    yr[ow] += bv;
            }
        }
    }
}
