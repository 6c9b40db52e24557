/* Fused FIRE table lookup for CPU (see firepe/kernels.py for the Python side and the math).
 *
 * For query row i and key j (visible when k_pos[j] <= q_pos[i]), d = q_pos[i] - k_pos[j]:
 *   long row:  x = psi_d[d] * inv_norm[i], p = clamp(x, 0, 1) * (G - 1), i0 = min(floor(p), G - 2),
 *              w = p - i0, idx = base + i0
 *   other row: idx = d, w = 0
 *   out[h, i, j] = T[h, idx] + (T[h, idx + 1] - T[h, idx]) * w        (0 where not visible)
 * The backward pass accumulates dT, d psi_d and d inv_norm in one sweep over the visible entries,
 * with per-thread copies of dT and d psi_d (no atomics).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#ifdef __linux__
#include <sys/mman.h>
#endif

/* The output is a fresh, untouched allocation of H*Q*K floats: ask for transparent huge pages on its
 * 2 MiB-aligned interior, so that first-touch page faults (most of the cost of writing a new 200 MB
 * tensor with 4 KiB pages) happen 512x less often. Harmless where THP is off. */
static void advise_huge(void *ptr, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    const uintptr_t huge = (uintptr_t)1 << 21;
    uintptr_t start = ((uintptr_t)ptr + huge - 1) & ~(huge - 1);
    uintptr_t end = ((uintptr_t)ptr + bytes) & ~(huge - 1);
    if (end > start) madvise((void *)start, end - start, MADV_HUGEPAGE);
#else
    (void)ptr; (void)bytes;
#endif
}

static inline int64_t row_coords(int64_t i, const int64_t *q_pos, const int64_t *k_pos, int64_t K,
                              const uint8_t *long_row, const float *psi_d, const float *inv_norm,
                              int64_t base, int64_t G, int32_t *idx, float *w, uint8_t *inside) {
    const int64_t qi = q_pos[i];
    const int lr = long_row[i];
    const float inv = inv_norm[i];
    const float top = (float)(G - 1);
    int64_t prefix = -1, late = 0; /* prefix: first hidden key; late: a visible key after it */
    for (int64_t j = 0; j < K; j++) {
        int64_t d = qi - k_pos[j];
        if (d < 0) {
            if (prefix < 0) prefix = j;
            idx[j] = -1; w[j] = 0.f; inside[j] = 0; continue;
        }
        if (prefix >= 0) late = 1;
        if (!lr) { idx[j] = (int32_t)d; w[j] = 0.f; inside[j] = 0; continue; }
        float x = psi_d[d] * inv;
        inside[j] = (x >= 0.f && x <= 1.f);
        float xc = x > 0.f ? (x < 1.f ? x : 1.f) : 0.f; /* NaN -> 0 */
        float p = xc * top;
        float f = floorf(p);
        if (f > (float)(G - 2)) f = (float)(G - 2);
        idx[j] = (int32_t)(base + (int64_t)f);
        w[j] = p - f;
    }
    if (late) return -1;
    return prefix < 0 ? K : prefix;
}

void fire_table_forward(const float *T, int64_t H, int64_t M, const float *psi_d, const float *inv_norm,
                        const int64_t *q_pos, int64_t Q, const int64_t *k_pos, int64_t K,
                        const uint8_t *long_row, int64_t base, int64_t G, float *out, int nthreads) {
    advise_huge(out, sizeof(float) * (size_t)(H * Q * K));
#pragma omp parallel num_threads(nthreads)
    {
        int32_t *idx = malloc(sizeof(int32_t) * (size_t)K);
        float *w = malloc(sizeof(float) * (size_t)K);
        uint8_t *inside = malloc((size_t)K);
#pragma omp for schedule(dynamic, 8)
        for (int64_t i = 0; i < Q; i++) {
            int64_t n = row_coords(i, q_pos, k_pos, K, long_row, psi_d, inv_norm, base, G, idx, w, inside);
            for (int64_t h = 0; h < H; h++) {
                const float *t = T + h * M;
                float *o = out + (h * Q + i) * K;
                if (n < 0) { /* visible keys scattered: test each */
                    for (int64_t j = 0; j < K; j++) {
                        int32_t k = idx[j];
                        o[j] = k < 0 ? 0.f : t[k] + (t[k + 1] - t[k]) * w[j];
                    }
                } else {
                    if (long_row[i])
                        for (int64_t j = 0; j < n; j++) o[j] = t[idx[j]] + (t[idx[j] + 1] - t[idx[j]]) * w[j];
                    else
                        for (int64_t j = 0; j < n; j++) o[j] = t[idx[j]];
                    if (n < K) memset(o + n, 0, sizeof(float) * (size_t)(K - n));
                }
            }
        }
        free(idx); free(w); free(inside);
    }
}

void fire_table_backward(const float *grad, const float *T, int64_t H, int64_t M, const float *psi_d,
                         int64_t D, const float *inv_norm, const int64_t *q_pos, int64_t Q,
                         const int64_t *k_pos, int64_t K, const uint8_t *long_row, int64_t base, int64_t G,
                         float *gT, float *gpsi, float *ginv, int nthreads) {
    /* Deterministic for a given thread count: a static row schedule, one accumulator per thread,
     * and the accumulators summed in thread order after the parallel region. */
    if (nthreads < 1) nthreads = 1;
    float **accT = calloc((size_t)nthreads, sizeof(float *)), **accpsi = calloc((size_t)nthreads, sizeof(float *));
    int used = 1;
#pragma omp parallel num_threads(nthreads)
    {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#pragma omp single
        used = omp_get_num_threads();
#endif
        int32_t *idx = malloc(sizeof(int32_t) * (size_t)K);
        float *w = malloc(sizeof(float) * (size_t)K);
        uint8_t *inside = malloc((size_t)K);
        float *gw = malloc(sizeof(float) * (size_t)K);
        float *myT = accT[tid] = calloc((size_t)(H * M), sizeof(float));
        float *mypsi = accpsi[tid] = calloc((size_t)D, sizeof(float));
#pragma omp for schedule(static, 8)
        for (int64_t i = 0; i < Q; i++) {
            int64_t n = row_coords(i, q_pos, k_pos, K, long_row, psi_d, inv_norm, base, G, idx, w, inside);
            memset(gw, 0, sizeof(float) * (size_t)K);
            for (int64_t h = 0; h < H; h++) {
                const float *t = T + h * M;
                float *gt = myT + h * M;
                const float *g = grad + (h * Q + i) * K;
                if (!long_row[i]) {
                    if (n >= 0)
                        for (int64_t j = 0; j < n; j++) gt[idx[j]] += g[j];
                    else
                        for (int64_t j = 0; j < K; j++)
                            if (idx[j] >= 0) gt[idx[j]] += g[j];
                    continue;
                }
                const int64_t stop = n >= 0 ? n : K;
                for (int64_t j = 0; j < stop; j++) {
                    int32_t k = idx[j];
                    if (n < 0 && k < 0) continue;
                    float gj = g[j], wj = w[j], gb = gj * wj;
                    gt[k] += gj - gb;
                    gt[k + 1] += gb;
                    gw[j] += gj * (t[k + 1] - t[k]);
                }
            }
            if (long_row[i]) {
                const float inv = inv_norm[i], top = (float)(G - 1);
                double acc = 0.0;
                for (int64_t j = 0; j < K; j++) {
                    if (!inside[j]) continue;
                    int64_t d = q_pos[i] - k_pos[j];
                    float gx = gw[j] * top;
                    mypsi[d] += gx * inv;
                    acc += (double)gx * psi_d[d];
                }
                ginv[i] = (float)acc;
            }
        }
        free(idx); free(w); free(inside); free(gw);
    }
    for (int t = 0; t < used; t++) {
        for (int64_t a = 0; a < H * M; a++) gT[a] += accT[t][a];
        for (int64_t a = 0; a < D; a++) gpsi[a] += accpsi[t][a];
        free(accT[t]); free(accpsi[t]);
    }
    free(accT); free(accpsi);
}
