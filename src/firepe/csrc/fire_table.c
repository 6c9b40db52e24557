/* Fused FIRE table lookup for CPU (see firepe/kernels.py for the Python side and the math).
 *
 * For query row i and key j (visible when k_pos[j] <= q_pos[i]), d = q_pos[i] - k_pos[j]:
 *   long row:  x = psi_d[d] * inv_norm[i], p = clamp(x, 0, 1) * (G - 1), i0 = min(floor(p), G - 2),
 *              w = p - i0, idx = base + i0
 *   other row: idx = d, w = 0
 *   out[h, i, j] = T[h, idx] + S[h, idx] * w,  S[h, m] = T[h, m + 1] - T[h, m]      (0 where not visible)
 * The backward pass accumulates dT, d psi_d and d inv_norm in one sweep over the visible entries,
 * with per-thread accumulators (no atomics) summed in thread order (deterministic).
 *
 * (idx, w) depend on (i, j) only, not on the head. With keys at consecutive positions, enough rows
 * to pay for a table copy (training and evaluation; not a one-row decoding step) and SSE2, heads are
 * processed four at a time: the tables are copied
 * head-minor ({T[h..h+3, m], S[h..h+3, m]} side by side), one lookup serves four heads, and 4 x 4
 * register transposes turn four keys x four heads into four output rows (forward) or four gradient
 * rows into per-key head vectors (backward). Other key layouts and leftover heads take the scalar
 * loops. Build with -DFIREPE_NO_SIMD for the scalar loops only (the tests compare the two builds).
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
#if defined(__SSE2__) && !defined(FIREPE_NO_SIMD)
#define FIRE_SIMD 1
#include <emmintrin.h>
#endif

/* The output is a fresh allocation of H*Q*K floats: ask for transparent huge pages on its 2 MiB
 * aligned interior (512x fewer first-touch page faults; harmless where THP is off), then touch every
 * page from all threads, so the kernel's page zeroing runs in parallel and ahead of the writes. */
static void prepare_output(float *out, int64_t total, int nthreads) {
    if (total < ((int64_t)1 << 20)) return; /* under 4 MiB: not worth a parallel region */
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    const uintptr_t huge = (uintptr_t)1 << 21;
    uintptr_t start = ((uintptr_t)out + huge - 1) & ~(huge - 1);
    uintptr_t end = ((uintptr_t)(out + total)) & ~(huge - 1);
    if (end > start) madvise((void *)start, end - start, MADV_HUGEPAGE);
#endif
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t o = 0; o < total; o += 1024) out[o] = 0.f;
}

static int contiguous(const int64_t *k_pos, int64_t K) {
    if (K < 1) return 0;
    for (int64_t j = 1; j < K; j++)
        if (k_pos[j] != k_pos[0] + j) return 0;
    return 1;
}

/* Any key layout. Returns the length of the visible prefix (every visible key before the first hidden
 * one), or -1 when a visible key follows a hidden one. inside[j]: 0 <= x <= 1 (x gets a gradient). */
static int64_t row_coords(int64_t i, const int64_t *q_pos, const int64_t *k_pos, int64_t K,
                          const uint8_t *long_row, const float *psi_d, const float *inv_norm, int64_t base,
                          int64_t G, int32_t *idx, float *w, uint8_t *inside) {
    const int64_t qi = q_pos[i];
    const int lr = long_row[i];
    const float inv = inv_norm[i];
    const float top = (float)(G - 1);
    int64_t prefix = -1, late = 0;
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

/* Keys at k_pos[j] = k0 + j: the visible keys are the prefix j <= q_pos[i] - k0, and the loop has no
 * branches (it vectorizes). Same values as row_coords: for 0 <= p < 2^23 truncation is floor. */
static int64_t row_coords_contig(int64_t qi, int64_t k0, int64_t K, int lr, const float *psi_d, float inv,
                                 int64_t base, int64_t G, int32_t *idx, float *w, uint8_t *inside) {
    const int64_t dq = qi - k0;
    const int64_t n = dq < 0 ? 0 : (dq + 1 < K ? dq + 1 : K);
    if (!lr) {
        for (int64_t j = 0; j < n; j++) { idx[j] = (int32_t)(dq - j); w[j] = 0.f; inside[j] = 0; }
        return n;
    }
    const float top = (float)(G - 1);
    const int32_t last = (int32_t)(G - 2), b = (int32_t)base;
    for (int64_t j = 0; j < n; j++) {
        float x = psi_d[dq - j] * inv;
        inside[j] = (uint8_t)((x >= 0.f) & (x <= 1.f));
        float xc = x > 0.f ? x : 0.f; /* NaN -> 0 */
        xc = xc < 1.f ? xc : 1.f;
        float p = xc * top;
        int32_t f = (int32_t)p;
        f = f < last ? f : last;
        idx[j] = b + f;
        w[j] = p - (float)f;
    }
    return n;
}

typedef struct {
    const int64_t *q_pos, *k_pos;
    const uint8_t *long_row;
    const float *psi_d, *inv_norm;
    int64_t Q, K, base, G;
    int contig;
} Rows;

static int64_t coords(const Rows *r, int64_t i, int32_t *idx, float *w, uint8_t *inside) {
    if (r->contig)
        return row_coords_contig(r->q_pos[i], r->k_pos[0], r->K, r->long_row[i], r->psi_d, r->inv_norm[i],
                                 r->base, r->G, idx, w, inside);
    return row_coords(i, r->q_pos, r->k_pos, r->K, r->long_row, r->psi_d, r->inv_norm, r->base, r->G, idx, w,
                      inside);
}

/* The tables of heads 4g..4g+3 head-minor, for the four-heads-per-lookup path:
 * ts[(g * M + m) * 8 + l] = T[4g + l, m], ts[... + 4 + l] = S[4g + l, m]; *groups = H / 4.
 * NULL and *groups = 0 where that path does not apply: it needs SSE2, consecutive keys, and enough
 * lookups to pay for the copy (a decoding step reads one row of a table with max distance + G
 * columns). */
static float *grouped_tables(const Rows *r, const float *T, int64_t H, int64_t M, int64_t *groups) {
    *groups = 0;
#ifdef FIRE_SIMD
    if (!r->contig || H < 4 || r->Q * r->K < 4 * M) return NULL;
    float *ts = malloc(sizeof(float) * (size_t)((H / 4) * M * 8));
    if (!ts) return NULL;
    *groups = H / 4;
    for (int64_t g = 0; g < *groups; g++)
        for (int64_t l = 0; l < 4; l++) {
            const float *t = T + (4 * g + l) * M;
            float *dst = ts + g * M * 8 + l;
            for (int64_t m = 0; m < M; m++) {
                dst[m * 8] = t[m];
                dst[m * 8 + 4] = m + 1 < M ? t[m + 1] - t[m] : 0.f;
            }
        }
    return ts;
#else
    (void)r; (void)T; (void)H; (void)M;
    return NULL;
#endif
}

static void forward_scalar_head(const float *t, const int32_t *idx, const float *w, int64_t n, int64_t K,
                                int lr, float *o) {
    if (n < 0) {
        for (int64_t j = 0; j < K; j++) {
            int32_t k = idx[j];
            o[j] = k < 0 ? 0.f : t[k] + (t[k + 1] - t[k]) * w[j];
        }
        return;
    }
    if (lr)
        for (int64_t j = 0; j < n; j++) o[j] = t[idx[j]] + (t[idx[j] + 1] - t[idx[j]]) * w[j];
    else
        for (int64_t j = 0; j < n; j++) o[j] = t[idx[j]];
    if (n < K) memset(o + n, 0, sizeof(float) * (size_t)(K - n));
}

#ifdef FIRE_SIMD
/* Four heads of one row (visible prefix n): o[l][j] = T[l, idx[j]] + S[l, idx[j]] * w[j]. */
static void forward_group(const float *ts, const int32_t *idx, const float *w, int64_t n, int64_t K, int lr,
                          float *o[4]) {
    int64_t j = 0;
    for (; j + 4 <= n; j += 4) {
        __m128 r[4];
        for (int x = 0; x < 4; x++) {
            const float *e = ts + (int64_t)idx[j + x] * 8;
            r[x] = lr ? _mm_add_ps(_mm_loadu_ps(e), _mm_mul_ps(_mm_loadu_ps(e + 4), _mm_set1_ps(w[j + x])))
                      : _mm_loadu_ps(e);
        }
        _MM_TRANSPOSE4_PS(r[0], r[1], r[2], r[3]);
        for (int l = 0; l < 4; l++) _mm_storeu_ps(o[l] + j, r[l]);
    }
    for (; j < n; j++) {
        const float *e = ts + (int64_t)idx[j] * 8;
        for (int l = 0; l < 4; l++) o[l][j] = lr ? e[l] + e[4 + l] * w[j] : e[l];
    }
    if (n < K)
        for (int l = 0; l < 4; l++) memset(o[l] + n, 0, sizeof(float) * (size_t)(K - n));
}
#endif

void fire_table_forward(const float *T, int64_t H, int64_t M, const float *psi_d, const float *inv_norm,
                        const int64_t *q_pos, int64_t Q, const int64_t *k_pos, int64_t K,
                        const uint8_t *long_row, int64_t base, int64_t G, float *out, int nthreads) {
    if (nthreads < 1) nthreads = 1;
    prepare_output(out, H * Q * K, nthreads);
    const Rows rows = {q_pos, k_pos, long_row, psi_d, inv_norm, Q, K, base, G, contiguous(k_pos, K)};
    int64_t groups;
    float *ts = grouped_tables(&rows, T, H, M, &groups);
#pragma omp parallel num_threads(nthreads)
    {
        int32_t *idx = malloc(sizeof(int32_t) * (size_t)K);
        float *w = malloc(sizeof(float) * (size_t)K);
        uint8_t *inside = malloc((size_t)K);
#pragma omp for schedule(dynamic, 8)
        for (int64_t i = 0; i < Q; i++) {
            int64_t n = coords(&rows, i, idx, w, inside);
            int64_t h = 0;
#ifdef FIRE_SIMD
            for (; h < 4 * groups; h += 4) {
                float *o[4];
                for (int l = 0; l < 4; l++) o[l] = out + ((h + l) * Q + i) * K;
                forward_group(ts + (h / 4) * M * 8, idx, w, n, K, long_row[i], o);
            }
#endif
            for (; h < H; h++) forward_scalar_head(T + h * M, idx, w, n, K, long_row[i], out + (h * Q + i) * K);
        }
        free(idx); free(w); free(inside);
    }
    free(ts);
}

/* One head, scalar. a[k] += g (1 - w), b[k] += g w (b is added to dT[k + 1] at the end; two arrays,
 * so neighbouring lookups (k, k + 1) do not update the same word back to back); gw[j] += g S[k]. */
static void backward_scalar_head(const float *t, const float *g, const int32_t *idx, const float *w, int64_t n,
                                 int64_t K, int lr, float *a, float *b, float *gw) {
    const int64_t stop = n >= 0 ? n : K;
    for (int64_t j = 0; j < stop; j++) {
        int32_t k = idx[j];
        if (k < 0) continue;
        if (!lr) { a[k] += g[j]; continue; }
        float x = g[j], y = x * w[j];
        a[k] += x - y;
        b[k] += y;
        gw[j] += x * (t[k + 1] - t[k]);
    }
}

#ifdef FIRE_SIMD
/* Four heads of one row (visible prefix n); ab[m * 8 + l] accumulates a for head l, ab[m * 8 + 4 + l] b. */
static void backward_group(const float *ts, const float *g[4], const int32_t *idx, const float *w, int64_t n,
                           int lr, float *ab, float *gw) {
    int64_t j = 0;
    for (; j + 4 <= n; j += 4) {
        __m128 v[4] = {_mm_loadu_ps(g[0] + j), _mm_loadu_ps(g[1] + j), _mm_loadu_ps(g[2] + j),
                       _mm_loadu_ps(g[3] + j)};
        _MM_TRANSPOSE4_PS(v[0], v[1], v[2], v[3]); /* v[x]: the four heads at key j + x */
        if (!lr) {
            for (int x = 0; x < 4; x++) {
                float *e = ab + (int64_t)idx[j + x] * 8;
                _mm_storeu_ps(e, _mm_add_ps(_mm_loadu_ps(e), v[x]));
            }
            continue;
        }
        __m128 p[4];
        for (int x = 0; x < 4; x++) {
            const int64_t k = idx[j + x];
            float *e = ab + k * 8;
            __m128 y = _mm_mul_ps(v[x], _mm_set1_ps(w[j + x]));
            _mm_storeu_ps(e, _mm_add_ps(_mm_loadu_ps(e), _mm_sub_ps(v[x], y)));
            _mm_storeu_ps(e + 4, _mm_add_ps(_mm_loadu_ps(e + 4), y));
            p[x] = _mm_mul_ps(v[x], _mm_loadu_ps(ts + k * 8 + 4));
        }
        _MM_TRANSPOSE4_PS(p[0], p[1], p[2], p[3]); /* p[l]: head l at keys j..j+3 */
        __m128 s = _mm_add_ps(_mm_add_ps(p[0], p[1]), _mm_add_ps(p[2], p[3]));
        _mm_storeu_ps(gw + j, _mm_add_ps(_mm_loadu_ps(gw + j), s));
    }
    for (; j < n; j++) {
        const int64_t k = idx[j];
        float *e = ab + k * 8;
        for (int l = 0; l < 4; l++) {
            float x = g[l][j];
            if (!lr) { e[l] += x; continue; }
            float y = x * w[j];
            e[l] += x - y;
            e[4 + l] += y;
        }
        if (lr) {
            const float *s = ts + k * 8 + 4;
            gw[j] += (g[0][j] * s[0] + g[1][j] * s[1]) + (g[2][j] * s[2] + g[3][j] * s[3]);
        }
    }
}
#endif

void fire_table_backward(const float *grad, const float *T, int64_t H, int64_t M, const float *psi_d,
                         int64_t D, const float *inv_norm, const int64_t *q_pos, int64_t Q,
                         const int64_t *k_pos, int64_t K, const uint8_t *long_row, int64_t base, int64_t G,
                         float *gT, float *gpsi, float *ginv, int nthreads) {
    if (nthreads < 1) nthreads = 1;
    const Rows rows = {q_pos, k_pos, long_row, psi_d, inv_norm, Q, K, base, G, contiguous(k_pos, K)};
    int64_t groups;
    float *ts = grouped_tables(&rows, T, H, M, &groups);
    const int64_t rest = H - 4 * groups; /* heads for the scalar loop */
    float **accAB = calloc((size_t)nthreads, sizeof(float *)), **accA = calloc((size_t)nthreads, sizeof(float *));
    float **accB = calloc((size_t)nthreads, sizeof(float *)), **accpsi = calloc((size_t)nthreads, sizeof(float *));
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
        float *myAB = accAB[tid] = calloc((size_t)(groups * M * 8) + 1, sizeof(float));
        float *myA = accA[tid] = calloc((size_t)(rest * M) + 1, sizeof(float));
        float *myB = accB[tid] = calloc((size_t)(rest * M) + 1, sizeof(float));
        float *mypsi = accpsi[tid] = calloc((size_t)D, sizeof(float));
        (void)myAB;
#pragma omp for schedule(static, 8)
        for (int64_t i = 0; i < Q; i++) {
            const int64_t n = coords(&rows, i, idx, w, inside);
            const int lr = long_row[i];
            memset(gw, 0, sizeof(float) * (size_t)K);
            int64_t h = 0;
#ifdef FIRE_SIMD
            for (; h < 4 * groups; h += 4) {
                const float *g[4];
                for (int l = 0; l < 4; l++) g[l] = grad + ((h + l) * Q + i) * K;
                backward_group(ts + (h / 4) * M * 8, g, idx, w, n, lr, myAB + (h / 4) * M * 8, gw);
            }
#endif
            for (; h < H; h++) {
                const int64_t r = h - 4 * groups;
                backward_scalar_head(T + h * M, grad + (h * Q + i) * K, idx, w, n, K, lr, myA + r * M,
                                     myB + r * M, gw);
            }
            if (!lr) continue;
            /* dx[j] = gw[j] (G - 1) where 0 <= x <= 1; x = psi_d[d] inv_norm[i]. */
            const float inv = inv_norm[i], top = (float)(G - 1);
            double acc[4] = {0., 0., 0., 0.};
            if (rows.contig) {
                const int64_t dq = q_pos[i] - k_pos[0];
                int64_t j = 0;
                for (; j + 4 <= n; j += 4)
                    for (int l = 0; l < 4; l++) {
                        float gx = inside[j + l] ? gw[j + l] * top : 0.f;
                        mypsi[dq - j - l] += gx * inv;
                        acc[l] += (double)gx * psi_d[dq - j - l];
                    }
                for (; j < n; j++) {
                    float gx = inside[j] ? gw[j] * top : 0.f;
                    mypsi[dq - j] += gx * inv;
                    acc[0] += (double)gx * psi_d[dq - j];
                }
            } else {
                for (int64_t j = 0; j < K; j++) {
                    if (!inside[j]) continue;
                    int64_t d = q_pos[i] - k_pos[j];
                    float gx = gw[j] * top;
                    mypsi[d] += gx * inv;
                    acc[0] += (double)gx * psi_d[d];
                }
            }
            ginv[i] = (float)((acc[0] + acc[1]) + (acc[2] + acc[3]));
        }
        free(idx); free(w); free(inside); free(gw);
    }
    for (int t = 0; t < used; t++) {
        for (int64_t h = 0; h < H; h++) { /* dT[m] = a[m] + b[m - 1]; grouped heads interleaved, stride 8 */
            const int grouped = h < 4 * groups;
            const int64_t step = grouped ? 8 : 1;
            const float *a = grouped ? accAB[t] + (h / 4) * M * 8 + h % 4 : accA[t] + (h - 4 * groups) * M;
            const float *b = grouped ? a + 4 : accB[t] + (h - 4 * groups) * M;
            float *out = gT + h * M;
            out[0] += a[0];
            for (int64_t m = 1; m < M; m++) out[m] += a[m * step] + b[(m - 1) * step];
        }
        for (int64_t a = 0; a < D; a++) gpsi[a] += accpsi[t][a];
        free(accAB[t]); free(accA[t]); free(accB[t]); free(accpsi[t]);
    }
    free(accAB); free(accA); free(accB); free(accpsi);
    free(ts);
}
