/* Statistics kernels for tpu_cal.stats.TensorStats: C99 with the GCC/Clang vector extension (the build's width:
 * 512 or 256 bits with AVX-512 / AVX, else 128: SSE2 on x86-64, NEON on AArch64, scalar code where there are
 * none; the moment sums keep 128-bit double vectors, so their order of additions, and bits, are the same in
 * every build); no Python headers, loaded with ctypes.
 *
 * Every result is the one the numpy path of stats.py computes:
 *  - tc_minmax: min and max of a float32 buffer and whether it holds a NaN;
 *  - tc_clip_range: np.clip in place, with tc_minmax's answer for the result;
 *  - tc_accumulate: chunk by chunk (the numpy path's CHUNK values), the moment sums about a shift taken and
 *    merged exactly as TensorStats._add_moments/_merge_moments do (in double), the exact zeros, and the signed
 *    histogram: bin floor(float32(x) * scale) + side, with x == R in the last bin.
 * Bin indices come from the same float32 product and floor as numpy's, so histograms are bit-identical;
 * moments differ from numpy's only by the order of the double additions (~1e-15 relative).
 * Built with -std=c99 -O3 -ffp-contract=off and no fast-math: IEEE products, no FMA contraction.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vector.h"

typedef double v2d __attribute__((vector_size(16)));

#define BLOCK 2048   /* values per block: read from memory once, then from L1 by each loop below */
#define LANES 4      /* sub-histograms: a run of values in one bin (the zeros after a ReLU) makes LANES
                        independent increment chains instead of one that waits on its own stores */

static vf splat(float x) { return (vf){0} + x; }

/* vmin(a, b) = a < b ? a : b and vmax(a, b) = a > b ? a : b, lane by lane (b where a is NaN): SSE's minps and
 * maxps (and their AVX forms) are exactly that; elsewhere a bitwise select */
#if defined(__AVX512F__)
#include <immintrin.h>
static vf vmin(vf a, vf b) { return (vf)_mm512_min_ps((__m512)a, (__m512)b); }
static vf vmax(vf a, vf b) { return (vf)_mm512_max_ps((__m512)a, (__m512)b); }
#elif defined(__AVX__)
#include <immintrin.h>
static vf vmin(vf a, vf b) { return (vf)_mm256_min_ps((__m256)a, (__m256)b); }
static vf vmax(vf a, vf b) { return (vf)_mm256_max_ps((__m256)a, (__m256)b); }
#elif defined(__SSE__)
#include <xmmintrin.h>
static vf vmin(vf a, vf b) { return (vf)_mm_min_ps((__m128)a, (__m128)b); }
static vf vmax(vf a, vf b) { return (vf)_mm_max_ps((__m128)a, (__m128)b); }
#else
static vf vselect(vi mask, vf a, vf b) { return (vf)(((vi)a & mask) | ((vi)b & ~mask)); }
static vf vmin(vf a, vf b) { return vselect(a < b, a, b); }
static vf vmax(vf a, vf b) { return vselect(a > b, a, b); }
#endif

/* out[0], out[1] = min and max of x[0..n) ignoring NaN (+inf, -inf when n == 0); returns 1 if x holds a NaN */
int tc_minmax(const float *x, int64_t n, float *out)
{
    const float inf = HUGE_VALF;
    vf lo0 = splat(inf), lo1 = lo0, hi0 = -lo0, hi1 = -lo0;
    vi nan = {0};
    float lo = inf, hi = -inf;
    int64_t i = 0;
    int j;
    for (; i + 2 * VL <= n; i += 2 * VL) {    /* two accumulators per bound: independent compare chains */
        vf a = loadv(x + i), b = loadv(x + i + VL);
        lo0 = vmin(a, lo0);
        hi0 = vmax(a, hi0);
        lo1 = vmin(b, lo1);
        hi1 = vmax(b, hi1);
        nan |= (a != a) | (b != b);
    }
    lo0 = vmin(lo1, lo0);
    hi0 = vmax(hi1, hi0);
    for (j = 0; j < VL; j++) {
        lo = lo0[j] < lo ? lo0[j] : lo;
        hi = hi0[j] > hi ? hi0[j] : hi;
        nan[0] |= nan[j];
    }
    for (; i < n; i++) {
        lo = x[i] < lo ? x[i] : lo;
        hi = x[i] > hi ? x[i] : hi;
        nan[0] |= x[i] != x[i];
    }
    out[0] = lo;
    out[1] = hi;
    return nan[0] != 0;
}

/* y[0..n) = clip(y, lo, hi) in place as np.clip does it (NaN stays NaN, -0 stays -0), and out[0], out[1] = min
 * and max of the result ignoring NaN (+inf, -inf when n == 0); returns 1 if it holds a NaN. A fused ReLU6
 * applied to a piece of a conv's output while the piece is in cache: its range, all that the statistics of a
 * bounded output need, comes with it instead of a pass over memory (tc_minmax) later. */
int tc_clip_range(float *y, int64_t n, float lo, float hi, float *out)
{
    const float inf = HUGE_VALF;
    const vf vlo = splat(lo), vhi = splat(hi);
    vf mn = splat(inf), mx = -mn;
    vi nan = {0};
    float a = inf, b = -inf;
    int64_t i = 0;
    int j;
    for (; i + VL <= n; i += VL) {
        vf v = loadv(y + i);
        vi below = v < vlo, above = v > vhi;            /* false for NaN: it stays */
        v = (vf)(((vi)vlo & below) | ((vi)v & ~below));
        v = (vf)(((vi)vhi & above) | ((vi)v & ~above));
        memcpy(y + i, &v, sizeof v);
        mn = vmin(v, mn);
        mx = vmax(v, mx);
        nan |= v != v;
    }
    for (j = 0; j < VL; j++) {
        a = mn[j] < a ? mn[j] : a;
        b = mx[j] > b ? mx[j] : b;
        nan[0] |= nan[j];
    }
    for (; i < n; i++) {
        float v = y[i];
        v = v < lo ? lo : v;
        v = v > hi ? hi : v;
        y[i] = v;
        a = v < a ? v : a;
        b = v > b ? v : b;
        nan[0] |= v != v;
    }
    out[0] = a;
    out[1] = b;
    return nan[0] != 0;
}

/* s[0..3] += sums of d, d^2, d^3, d^4 over d = x - k, x[0..m) (d^3, d^4 only if higher) */
static void sums(const float *x, int64_t m, double k, int higher, double *s)
{
    v2d a1 = {0, 0}, a2 = a1, a3 = a1, a4 = a1, b1 = a1, b2 = a1, b3 = a1, b4 = a1, kk = {k, k};
    int64_t i = 0;
    int j;
    for (; i + 4 <= m; i += 4) {         /* two accumulator sets: independent add chains */
        v2d d = (v2d){x[i], x[i + 1]} - kk, e = (v2d){x[i + 2], x[i + 3]} - kk;
        v2d d2 = d * d, e2 = e * e;
        a1 += d;
        a2 += d2;
        b1 += e;
        b2 += e2;
        if (higher) {
            a3 += d2 * d;
            a4 += d2 * d2;
            b3 += e2 * e;
            b4 += e2 * e2;
        }
    }
    a1 += b1; a2 += b2; a3 += b3; a4 += b4;
    for (; i < m; i++) {
        double d = (double)x[i] - k, d2 = d * d;
        a1[0] += d;
        a2[0] += d2;
        a3[0] += d2 * d;
        a4[0] += d2 * d2;
    }
    for (j = 0; j < 2; j++) {
        s[0] += a1[j];
        s[1] += a2[j];
        if (higher) {
            s[2] += a3[j];
            s[3] += a4[j];
        }
    }
}

/* number of exact zeros (+0 and -0) in x[0..m) */
static int64_t zeros(const float *x, int64_t m)
{
    vi z = {0};
    int64_t i = 0, n = 0;
    int j;
    for (; i + VL <= m; i += VL)
        z -= loadv(x + i) == splat(0);  /* a true lane is -1 */
    for (j = 0; j < VL; j++)
        n += z[j];
    for (; i < m; i++)
        n += x[i] == 0.0f;
    return n;
}

/* idx[0..k) = floor(x[i] * scale) + side, clamped to [0, 2 * side - 1] (x == R: the last bin); returns k.
 * squeeze (AVX-512 builds only): the values in bin `side` (zero's: half of a ReLU6 output) are left out of idx
 * and counted in *squeezed, so the scatter is not a chain of increments of one counter. *in_zero_bin: how many
 * values of x are in bin `side` (squeezed or not; where there is no squeezing, 0), for the caller's choice. */
static int64_t bin_index(const float *x, int64_t m, float scale, int32_t side, int32_t *idx, int squeeze,
                         int64_t *squeezed, int64_t *in_zero_bin)
{
    /* clamping the product below `side` puts x == R in the last bin; a range covering x never needs the
     * rest of the clamp, which keeps the indices in the histogram whatever the input (NaN included) */
    const float bottom = -(float)side;
    float top = (float)side;
    uint32_t bits;
    memcpy(&bits, &top, sizeof bits);
    bits--;                                  /* the largest float below side (side > 0) */
    memcpy(&top, &bits, sizeof top);
    const vf vs = splat(scale), vt = splat(top), vb = splat(bottom);
    const vi vside = (vi){0} + side;
    vi zc = {0};
    int64_t i = 0, k = 0, z = 0;
    int j;
    (void)squeeze;                           /* unused without AVX-512 */
    for (; i + VL <= m; i += VL) {
        vf f = loadv(x + i) * vs;
        vi t;
        f = vmax(vmin(f, vt), vb);
        t = __builtin_convertvector(f, vi);             /* truncation toward zero ... */
        t += __builtin_convertvector(t, vf) > f;        /* ... minus one where that rounded up: floor */
        t += vside;
#if defined(__AVX512F__)
        if (squeeze) {
            const __mmask16 keep = _mm512_cmpneq_epi32_mask((__m512i)t, (__m512i)vside);
            _mm512_storeu_si512(idx + k, _mm512_maskz_compress_epi32(keep, (__m512i)t));  /* idx has VL spare */
            k += __builtin_popcount(keep);
            z += VL - __builtin_popcount(keep);
            continue;
        }
        zc -= t == vside;                               /* a true lane is -1 */
#endif
        memcpy(idx + k, &t, sizeof t);
        k += VL;
    }
    *squeezed = z;
    for (j = 0; j < VL; j++)
        z += zc[j];
    *in_zero_bin = z;
    for (; i < m; i++) {
        float f = x[i] * scale;
        int32_t t;
        f = f < top ? f : top;
        f = f > bottom ? f : bottom;
        t = (int32_t)f;
        t -= (float)t > f;
        idx[k++] = t + side;
    }
    return k;
}

/* hist += the LANES sub-histograms (one after the other in w), which are then cleared */
static void flush(uint32_t *w, int64_t *hist, int32_t side)
{
    int64_t b, l, bins = 2 * (int64_t)side;
    for (l = 0; l < LANES; l++)          /* lane by lane: a plain loop the compiler vectorizes */
        for (b = 0; b < bins; b++)
            hist[b] += w[l * bins + b];
    memset(w, 0, (size_t)(bins * LANES) * sizeof *w);
}

/* Chan/Pebay merge of a chunk (nb values, mean mb, central sums m2b..m4b) into (count, mom = mean, M2, M3,
 * M4): the formulas of TensorStats._merge_moments, in the same order */
static void merge(int64_t *count, double *mom, int64_t nbi, double mb, double m2b, double m3b, double m4b)
{
    double na = (double)*count, nb = (double)nbi, n, d, dn, m2a, m3a;
    if (*count == 0) {
        *count = nbi;
        mom[0] = mb; mom[1] = m2b; mom[2] = m3b; mom[3] = m4b;
        return;
    }
    n = na + nb;
    d = mb - mom[0];
    dn = d / n;
    m2a = mom[1];
    m3a = mom[2];
    mom[3] += (m4b + d * (dn * dn * dn) * na * nb * (na * na - na * nb + nb * nb)
               + 6 * dn * dn * (na * na * m2b + nb * nb * m2a) + 4 * dn * (na * m3b - nb * m3a));
    mom[2] += m3b + d * dn * dn * na * nb * (na - nb) + 3 * dn * (na * m2b - nb * m2a);
    mom[1] += m2b + d * dn * na * nb;
    mom[0] += dn * nb;
    *count += nbi;
}

/* min and max of x[0..m) into lo, hi (running); returns nonzero if x holds a NaN */
static int block_bounds(const float *x, int64_t m, float *lo, float *hi)
{
    float b[2];
    int nan = tc_minmax(x, m, b);
    *lo = b[0] < *lo ? b[0] : *lo;
    *hi = b[1] > *hi ? b[1] : *hi;
    return nan;
}

/* The loop of tc_accumulate and tc_update. check: the bounds of each block are taken first (the block then
 * comes from L1 for the rest); a NaN, or a value outside the histogram (|x| * scale > side, the test
 * TensorStats._ensure_range makes, in double), stops it and returns 1 with nothing changed. Otherwise returns 0;
 * bounds (check only) = min, max of x. */
static int accumulate(const float *x, int64_t n, int64_t chunk, int moments, int64_t *count_io, double *mom_io,
                      int64_t *hist, int32_t side, float scale, int check, float *bounds)
{
    int32_t idx[BLOCK + VL];
    int squeeze = 0;                        /* the previous block had many values in zero's bin */
    int64_t start, s, m, b, i, flushed = 0, count[2] = {count_io[0], count_io[1]};
    double mom[4] = {mom_io[0], mom_io[1], mom_io[2], mom_io[3]};
    const double limit = (double)side;
    float lo = HUGE_VALF, hi = -HUGE_VALF;
    /* sub-histograms pay for their allocation from about 16 values a bin; without one (small input, or no
     * memory) the counts go straight into hist (never when checking: hist changes only once all is done) */
    uint32_t *w = hist && (check || n >= 32 * (int64_t)side) ? calloc((size_t)side * 2 * LANES, sizeof *w) : NULL;
    if (check && !w)
        return 1;
    for (start = 0; start < n; start += chunk) {
        const float *c = x + start;
        double k = mom[0], sum[4] = {0, 0, 0, 0};
        m = n - start < chunk ? n - start : chunk;
        if (moments > 1 && count[0] == 0) {  /* first chunk: shift by the mean of its first 256 values */
            int64_t h = m < 256 ? m : 256;
            k = 0;
            for (s = 0; s < h; s++)
                k += c[s];
            k /= (double)h;
        }
        for (s = 0; s < m; s += BLOCK) {
            b = m - s < BLOCK ? m - s : BLOCK;
            if (check && (block_bounds(c + s, b, &lo, &hi) || -(double)lo * scale > limit
                          || (double)hi * scale > limit)) {
                free(w);
                return 1;
            }
            if (moments > 1)
                sums(c + s, b, k, moments > 2, sum);
            if (moments)
                count[1] += zeros(c + s, b);
            if (hist) {
                int64_t squeezed, in_zero;
                const int64_t nb = b;
                b = bin_index(c + s, nb, scale, side, idx, squeeze, &squeezed, &in_zero);
                squeeze = in_zero * 8 > nb;     /* squeezing pays from about 1 value in 8 in zero's bin */
                if (w)
                    w[side] += (uint32_t)squeezed;
                else
                    hist[side] += squeezed;
                i = 0;
                if (w) {
                    for (; i + LANES <= b; i += LANES) {
                        w[idx[i]]++;
                        w[idx[i + 1] + 2 * side]++;
                        w[idx[i + 2] + 4 * side]++;
                        w[idx[i + 3] + 6 * side]++;
                    }
                    for (; i < b; i++)
                        w[idx[i]]++;
                }
                for (; i < b; i++)
                    hist[idx[i]]++;
            }
        }
        if (moments > 1) {
            double dm = (double)m, u = sum[0] / dm, cm2, cm3 = 0, cm4 = 0;
            cm2 = sum[1] - dm * u * u;
            cm2 = cm2 > 0 ? cm2 : 0;
            if (moments > 2) {
                cm3 = sum[2] - 3 * u * sum[1] + 2 * dm * (u * u * u);
                cm4 = sum[3] - 4 * u * sum[2] + 6 * u * u * sum[1] - 3 * dm * (u * u * u * u);
            }
            merge(count, mom, m, k + u, cm2, cm3, cm4);
        }
        /* flush before a uint32 count can wrap (a checked call's caller keeps n below 2^31: no flush before the end) */
        if (w && !check && start + m - flushed >= (int64_t)1 << 31) {
            flush(w, hist, side);
            flushed = start + m;
        }
    }
    if (w) {
        flush(w, hist, side);
        free(w);
    }
    if (moments) {
        count_io[0] = count[0];
        count_io[1] = count[1];
        memcpy(mom_io, mom, sizeof mom);
    }
    if (check) {
        bounds[0] = lo;
        bounds[1] = hi;
    }
    return 0;
}

/* Adds x[0..n) to the statistics, `chunk` values at a time (as the numpy path cuts them).
 * moments: 0 none, 1 the exact zeros only, 2 mean and M2, 4 mean and M2..M4; count[0] values in the moments
 * (2 and 4 only), count[1] exact zeros (1, 2, 4); mom: mean, M2, M3, M4. hist: 2 * side counts, or NULL for no
 * histogram. */
void tc_accumulate(const float *x, int64_t n, int64_t chunk, int moments, int64_t *count, double *mom,
                   int64_t *hist, int32_t side, float scale)
{
    accumulate(x, n, chunk, moments, count, mom, hist, side, scale, 0, NULL);
}

/* tc_accumulate in one pass with tc_minmax, for a histogram whose range is already set (hist required, n below
 * 2^31): returns 0 with the statistics added and bounds = min, max of x; or 1, with nothing changed, where x
 * holds a NaN or a value beyond the range (the caller then takes the two-pass way, which grows the range or
 * reports the value). Saves the separate bounds pass over memory. */
int tc_update(const float *x, int64_t n, int64_t chunk, int moments, int64_t *count, double *mom, int64_t *hist,
              int32_t side, float scale, float *bounds)
{
    return accumulate(x, n, chunk, moments, count, mom, hist, side, scale, 1, bounds);
}
