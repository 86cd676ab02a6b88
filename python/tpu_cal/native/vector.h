/* What the kernels share: the build's vector width (VL floats: 16 with AVX-512, 8 with AVX, else 4, the
 * portable build's 128-bit vectors), its float and int32 vector types, and an unaligned load. Part of every
 * build's cache key (tpu_cal.native.SOURCES). */
#ifndef TPU_CAL_VECTOR_H
#define TPU_CAL_VECTOR_H

#include <stdint.h>
#include <string.h>

#if defined(__AVX512F__)
#define VL 16
#elif defined(__AVX__)
#define VL 8
#else
#define VL 4
#endif

typedef float vf __attribute__((vector_size(VL * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(VL * sizeof(float))));

static inline vf loadv(const float *p)
{
    vf v;
    memcpy(&v, p, sizeof v);     /* unaligned load */
    return v;
}

#endif
