/* Elementwise kernels for tpu_cal.interp.kernels (loaded with ctypes): one pass over memory where numpy takes
 * several, each on a range [0, n) so callers spread pieces over threads (ctypes releases the GIL).
 *
 * tc_hardswish: y = x / 6 + 0.5, clipped to [0, 1], times x, in float32 and in that order, as the numpy kernel
 * computes it (no FMA contraction in the build): the same bits. NaN stays NaN, as with np.clip.
 * tc_lookup: y[i] = table[x[i]] for 1-byte codes and a 256-entry table of 1-byte values (int8 ops' tables).
 * tc_lookup2: y[i] = table[a[i] * 256 + b[k]] with k = i, or k = i / inner (b holds one code per run of
 * `inner` elements of a: a per-channel or per-sample operand broadcast over the rest), or k = 0 (inner = 0:
 * a one-value b), for the 65536-entry tables of int8 binary ops.
 */
#include <stdint.h>

void tc_hardswish(const float *x, float *y, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        float v = x[i];
        float t = v / 6.0f;
        t = t + 0.5f;
        t = t < 0.0f ? 0.0f : t;
        t = t > 1.0f ? 1.0f : t;
        y[i] = t * v;
    }
}

void tc_lookup(const uint8_t *table, const uint8_t *x, uint8_t *y, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        y[i] = table[x[i]];
}

void tc_lookup2(const uint8_t *table, const uint8_t *a, const uint8_t *b, uint8_t *y, int64_t start, int64_t n,
                int64_t inner)
{
    if (inner == 1) {
        for (int64_t i = start; i < start + n; i++)
            y[i] = table[((int64_t)a[i] << 8) | b[i]];
    } else if (inner == 0) {
        const uint8_t *row = table + (int64_t)b[0];
        for (int64_t i = start; i < start + n; i++)
            y[i] = row[(int64_t)a[i] << 8];
    } else {
        for (int64_t i = start; i < start + n; i++)
            y[i] = table[((int64_t)a[i] << 8) | b[i / inner]];
    }
}

/* The fused int8 requantization of tpu_cal.interp.kernels.tpu.Requant (rows [r0, r1) of an R x L float32
 * accumulator holding exact integers): clip to [lo, hi] in float32, t = x * mult + cq in float64, the byte of t
 * (t lies in [0, 256): truncation is the floor) plus qshift modulo 256, exactly the numpy steps. The parameters
 * of element (r, l) are at r * prow + l * pcol (per row, per column, or one for all). */
void tc_requant_fused(const float *x, int64_t r0, int64_t r1, int64_t L, const double *mult, const double *cq,
                      const float *lo, const float *hi, int64_t prow, int64_t pcol, uint8_t qshift, uint8_t *out)
{
    for (int64_t r = r0; r < r1; r++) {
        const float *xr = x + r * L;
        uint8_t *o = out + r * L;
        if (pcol == 0) {
            const int64_t k = r * prow;
            const float a = lo[k], b = hi[k];
            const double m = mult[k], c = cq[k];
            for (int64_t l = 0; l < L; l++) {
                float v = xr[l];
                v = v < a ? a : v;
                v = v > b ? b : v;
                double t = (double)v * m;
                t = t + c;
                o[l] = (uint8_t)((uint8_t)t + qshift);
            }
        } else {
            for (int64_t l = 0; l < L; l++) {
                const int64_t k = r * prow + l * pcol;
                float v = xr[l];
                v = v < lo[k] ? lo[k] : v;
                v = v > hi[k] ? hi[k] : v;
                double t = (double)v * mult[k];
                t = t + cq[k];
                o[l] = (uint8_t)((uint8_t)t + qshift);
            }
        }
    }
}
