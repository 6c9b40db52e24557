/* Causal softmax attention with an additive per-head bias, forward and backward, fused on the CPU.
 *
 * Forward, per batch b and head h, query row i with n_i = nvis[i] visible keys (a prefix 0..n_i-1):
 *     s_ij = scale * q_i . k_j + bias[h, i, j],  P_ij = softmax_j(s_ij) (j < n_i; 0 for j >= n_i),
 *     out_i = sum_j P_ij v_j.
 * Backward with dO = d out:
 *     delta_i = dO_i . out_i,  dP_ij = dO_i . v_j,  dS_ij = P_ij (dP_ij - delta_i),
 *     dq_i = scale sum_j dS_ij k_j,  dk_j = scale sum_i dS_ij q_i,  dv_j = sum_i P_ij dO_i,
 *     dbias[h, i, j] = sum_b dS_ij  (0 where j >= n_i).
 * A row with no visible key (n_i = 0) gets out_i = 0 and no gradient.
 *
 * Layouts (float32, contiguous): q [B, H, Q, D], k, v [B, H, K, D], bias [H, Q, K], P [B, H, Q, K]
 * (written by the forward when save_p, zeros past n_i; read by the backward), nvis [Q] int64 in [0, K].
 *
 * Products run over vectors of 8 floats (GCC vector extensions) with a fixed summation order per output
 * and no fused multiply-adds (-ffp-contract=off): the results do not depend on the thread count or on
 * which instruction-set variant runs. The forward parallelizes over (b, h), the
 * backward over h (each thread sums its heads' dbias over b, so no atomics). Both return 1 when a
 * per-thread buffer could not be allocated (outputs then incomplete), else 0.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#ifndef FIREPE_BODY
/* The kernel body is compiled once per instruction set (this file includes itself): with GCC on x86-64,
 * x86-64-v4 (AVX-512) and x86-64-v3 (AVX2) variants beside the baseline one, chosen at run time.
 * Helpers are defined inside each variant so that their 8-float vectors are lowered for its target. */
#define FIREPE_BODY
#define INLINE static inline __attribute__((always_inline))
#define ROWS 4
typedef float v8 __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(FIREPE_NO_VARIANTS)
#define SIMD_VARIANTS 1
#else
#define SIMD_VARIANTS 0
#endif

#if SIMD_VARIANTS
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v4")
#define VARIANT(name) name##_v4
#include __FILE__
#undef VARIANT
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v3")
#define VARIANT(name) name##_v3
#include __FILE__
#undef VARIANT
#pragma GCC pop_options
#endif
#define VARIANT(name) name##_base
#include __FILE__
#undef VARIANT

typedef void (*forward_fn)(const float *, const float *, const float *, const float *, const int64_t *, int64_t,
                           int64_t, int64_t, float, float *, float *, int, float *, float *, float *);
typedef void (*backward_fn)(const float *, const float *, const float *, const float *, const float *,
                            const float *, const int64_t *, int64_t, int64_t, int64_t, float, float *, float *,
                            float *, float *, int, float *, float *, float *);
static forward_fn forward_bh_impl = forward_bh_base;
static backward_fn backward_bh_impl = backward_bh_base;

/* Which variant runs: 4 (x86-64-v4), 3 (x86-64-v3) or 0 (baseline); FIREPE_SIMD=0/3 in the environment
 * caps it (tests compare the variants). */
int bias_attention_select(int cap) {
    int level = 0;
#if SIMD_VARIANTS
    __builtin_cpu_init();
    if (cap >= 4 && __builtin_cpu_supports("x86-64-v4")) level = 4;
    else if (cap >= 3 && __builtin_cpu_supports("x86-64-v3")) level = 3;
    forward_bh_impl = level == 4 ? forward_bh_v4 : level == 3 ? forward_bh_v3 : forward_bh_base;
    backward_bh_impl = level == 4 ? backward_bh_v4 : level == 3 ? backward_bh_v3 : backward_bh_base;
#else
    (void)cap;
#endif
    return level;
}

int bias_attention_forward(const float *q, const float *k, const float *v, const float *bias, const int64_t *nvis,
                            int64_t B, int64_t H, int64_t Q, int64_t K, int64_t D, float scale, float *out, float *P,
                            int save_p, int threads) {
    int64_t kpad = (K + 7) / 8 * 8;
    int failed = 0;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads) reduction(|| : failed)
#endif
    {
        float *kt = malloc(sizeof(float) * (size_t)(D * kpad + 2 * ROWS * kpad));
        if (!kt) failed = 1;
#ifdef _OPENMP
#pragma omp for collapse(2) schedule(static)
#endif
        for (int64_t b = 0; b < B; b++)
            for (int64_t h = 0; h < H; h++) {
                int64_t bh = b * H + h;
                if (!kt) continue;
                forward_bh_impl(q + bh * Q * D, k + bh * K * D, v + bh * K * D, bias + h * Q * K, nvis, Q, K, D, scale,
                           out + bh * Q * D, save_p ? P + bh * Q * K : NULL, save_p, kt, kt + D * kpad,
                           kt + D * kpad + ROWS * kpad);
            }
        free(kt);
    }
    return failed;
}

int bias_attention_backward(const float *grad_out, const float *q, const float *k, const float *v, const float *out,
                             const float *P, const int64_t *nvis, int64_t B, int64_t H, int64_t Q, int64_t K,
                             int64_t D, float scale, float *dq, float *dk, float *dv, float *dbias, int threads) {
    int64_t kpad = (K + 7) / 8 * 8;
    int failed = 0;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads) reduction(|| : failed)
#endif
    {
        float *vt = malloc(sizeof(float) * (size_t)(D * kpad + 2 * ROWS * kpad));
        if (!vt) failed = 1;
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int64_t h = 0; h < H; h++)
            for (int64_t b = 0; b < B; b++) {
                int64_t bh = b * H + h;
                if (!vt) continue;
                backward_bh_impl(grad_out + bh * Q * D, q + bh * Q * D, k + bh * K * D, v + bh * K * D, out + bh * Q * D,
                            P + bh * Q * K, nvis, Q, K, D, scale, dq + bh * Q * D, dk + bh * K * D, dv + bh * K * D,
                            dbias ? dbias + h * Q * K : NULL, b == 0, vt, vt + D * kpad, vt + D * kpad + ROWS * kpad);
            }
        free(vt);
    }
    return failed;
}

#else /* FIREPE_BODY: one variant of the helpers and the per-(batch, head) functions */
#define vload VARIANT(vload)
#define vstore VARIANT(vstore)
#define vset VARIANT(vset)
#define vexp VARIANT(vexp)
#define transpose_pad VARIANT(transpose_pad)
#define rows_times_t VARIANT(rows_times_t)
#define rows_times VARIANT(rows_times)
#define accumulate_t VARIANT(accumulate_t)
#define round8 VARIANT(round8)
#define softmax_row VARIANT(softmax_row)

INLINE v8 vload(const float *p) { v8 x; memcpy(&x, p, sizeof x); return x; }
INLINE void vstore(float *p, v8 x) { memcpy(p, &x, sizeof x); }
INLINE v8 vset(float a) { return (v8){a, a, a, a, a, a, a, a}; }

/* exp(x) for x <= 0 (softmax arguments): Cody-Waite reduction x = n ln2 + r, |r| <= ln2 / 2, then
 * the Cephes single-precision polynomial; 0 below -87 (and for -inf). About 1 ulp. */
INLINE v8 vexp(v8 x) {
    const v8 lo = vset(-87.0f);
    v8i small = x < lo;
    x = (v8)((v8i)x & ~small) + (v8)((v8i)lo & small);
    v8 t = x * vset(1.44269504088896341f) + vset(12582912.0f);
    v8 n = t - vset(12582912.0f);
    v8 r = x - n * vset(0.693359375f);
    r = r - n * vset(-2.12194440e-4f);
    v8 p = vset(1.9875691500e-4f);
    p = p * r + vset(1.3981999507e-3f);
    p = p * r + vset(8.3334519073e-3f);
    p = p * r + vset(4.1665795894e-2f);
    p = p * r + vset(1.6666665459e-1f);
    p = p * r + vset(5.0000001201e-1f);
    p = p * (r * r) + r + vset(1.0f);
    v8i e = (__builtin_convertvector(n, v8i) + 127) << 23;
    v8 y = p * (v8)e;
    return (v8)((v8i)y & ~small);
}

/* dst[d][j] = src[j][d] for j < n, 0 for n <= j < npad (dst rows of npad floats). */
INLINE void transpose_pad(const float *src, int64_t n, int64_t D, int64_t npad, float *dst) {
    for (int64_t d = 0; d < D; d++) {
        float *row = dst + d * npad;
        for (int64_t j = 0; j < n; j++) row[j] = src[j * D + d];
        for (int64_t j = n; j < npad; j++) row[j] = 0.0f;
    }
}

/* out[r][j] = sum_d a[r][d] bt[d][j] for r < rows, j < ncols (rounded up to 8; out rows of npad floats). */
INLINE void rows_times_t(const float *a, int64_t rows, int64_t D, const float *bt, int64_t npad, int64_t ncols,
                         float *out) {
    for (int64_t j = 0; j < ncols; j += 8) {
        v8 acc[ROWS] = {0};
        for (int64_t d = 0; d < D; d++) {
            v8 b = vload(bt + d * npad + j);
            for (int r = 0; r < ROWS; r++)
                if (r < rows) acc[r] = acc[r] + vset(a[r * D + d]) * b;
        }
        for (int r = 0; r < ROWS; r++)
            if (r < rows) vstore(out + r * npad + j, acc[r]);
    }
}

/* out[r][:] (=|+=) alpha * sum_{j < n} w[r][j] m[j][:] for r < rows; w rows of ldw floats, m [n][D]. */
INLINE void rows_times(const float *w, int64_t ldw, int64_t rows, int64_t n, const float *m, int64_t D, float alpha,
                       float *out, int accumulate) {
    int64_t d = 0;
    for (; d + 8 <= D; d += 8) {
        v8 acc[ROWS] = {0};
        for (int64_t j = 0; j < n; j++) {
            v8 x = vload(m + j * D + d);
            for (int r = 0; r < ROWS; r++)
                if (r < rows) acc[r] = acc[r] + vset(w[r * ldw + j]) * x;
        }
        for (int r = 0; r < ROWS; r++) {
            if (r >= rows) continue;
            v8 y = acc[r] * vset(alpha);
            if (accumulate) y = y + vload(out + r * D + d);
            vstore(out + r * D + d, y);
        }
    }
    for (; d < D; d++)
        for (int r = 0; r < rows; r++) {
            float acc = 0.0f;
            for (int64_t j = 0; j < n; j++) acc += w[r * ldw + j] * m[j * D + d];
            out[r * D + d] = accumulate ? out[r * D + d] + acc * alpha : acc * alpha;
        }
}

/* out[j][:] += sum_r w[r][j] a[r][:] for j < n, r < rows; w rows of ldw floats, a [rows][D], out [n][D]. */
INLINE void accumulate_t(const float *w, int64_t ldw, int64_t rows, int64_t n, const float *a, int64_t D, float *out) {
    int64_t d = 0;
    for (; d + 8 <= D; d += 8) {
        v8 x[ROWS];
        for (int r = 0; r < ROWS; r++) x[r] = r < rows ? vload(a + r * D + d) : vset(0.0f);
        for (int64_t j = 0; j < n; j++) {
            v8 y = vload(out + j * D + d);
            for (int r = 0; r < ROWS; r++)
                if (r < rows) y = y + vset(w[r * ldw + j]) * x[r];
            vstore(out + j * D + d, y);
        }
    }
    for (; d < D; d++)
        for (int64_t j = 0; j < n; j++) {
            float y = out[j * D + d];
            for (int r = 0; r < rows; r++) y += w[r * ldw + j] * a[r * D + d];
            out[j * D + d] = y;
        }
}

INLINE int64_t round8(int64_t n) { return (n + 7) / 8 * 8; }

/* Softmax of row s[0..n) (already scaled and biased) into p[0..n), zeros in p[n..width). */
INLINE void softmax_row(float *s, int64_t n, int64_t width, float *p) {
    if (n == 0) {
        memset(p, 0, (size_t)width * sizeof(float));
        return;
    }
    float mx = s[0];
    for (int64_t j = 1; j < n; j++) mx = s[j] > mx ? s[j] : mx;
    int64_t j = 0;
    v8 vs = {0};
    for (; j + 8 <= n; j += 8) {
        v8 e = vexp(vload(s + j) - vset(mx));
        vstore(p + j, e);
        vs = vs + e;
    }
    float sum = 0.0f;
    for (int k = 0; k < 8; k++) sum += vs[k];
    if (j < n) {
        float tail[8] = {0};
        for (int64_t t = j; t < n; t++) tail[t - j] = s[t] - mx;
        for (int64_t t = n - j; t < 8; t++) tail[t] = -INFINITY;
        v8 e = vexp(vload(tail));
        for (int64_t t = j; t < n; t++) { p[t] = e[t - j]; sum += e[t - j]; }
    }
    float inv = 1.0f / sum;
    for (j = 0; j < n; j++) p[j] *= inv;
    for (; j < width; j++) p[j] = 0.0f;
}

/* One (batch, head) of the forward; kt: D x kpad floats, srow, prow: ROWS x kpad floats each. */
static void VARIANT(forward_bh)(const float *qb, const float *kb, const float *vb, const float *bb, const int64_t *nvis,
                       int64_t Q, int64_t K, int64_t D, float scale, float *ob, float *pb, int save_p, float *kt,
                       float *srow, float *prow) {
    int64_t kpad = round8(K);
    transpose_pad(kb, K, D, kpad, kt);
    for (int64_t i0 = 0; i0 < Q; i0 += ROWS) {
        int64_t rows = Q - i0 < ROWS ? Q - i0 : ROWS, nmax = 0;
        for (int r = 0; r < rows; r++) nmax = nvis[i0 + r] > nmax ? nvis[i0 + r] : nmax;
        rows_times_t(qb + i0 * D, rows, D, kt, kpad, nmax, srow);
        float *pr = save_p ? pb + i0 * K : prow;
        int64_t ldp = save_p ? K : kpad;
        for (int r = 0; r < rows; r++) {
            int64_t i = i0 + r, n = nvis[i];
            float *s = srow + r * kpad;
            const float *br = bb + i * K;
            for (int64_t j = 0; j < n; j++) s[j] = s[j] * scale + br[j];
            softmax_row(s, n, save_p ? K : nmax, pr + r * ldp);
        }
        rows_times(pr, ldp, rows, nmax, vb, D, 1.0f, ob + i0 * D, 0);
    }
}

/* One (batch, head) of the backward: dq, dk, dv of this (b, h); dbias row block db (NULL: none) set when
 * first, else added to. vt: D x kpad floats, dprow, ds: ROWS x kpad floats each. */
static void VARIANT(backward_bh)(const float *gb, const float *qb, const float *kb, const float *vb, const float *ob,
                        const float *pb, const int64_t *nvis, int64_t Q, int64_t K, int64_t D, float scale,
                        float *dqb, float *dkb, float *dvb, float *db, int first, float *vt, float *dprow,
                        float *ds) {
    int64_t kpad = (K + 7) / 8 * 8;
    memset(dkb, 0, sizeof(float) * (size_t)(K * D));
    memset(dvb, 0, sizeof(float) * (size_t)(K * D));
    transpose_pad(vb, K, D, kpad, vt);
    for (int64_t i0 = 0; i0 < Q; i0 += ROWS) {
        int64_t rows = Q - i0 < ROWS ? Q - i0 : ROWS, nmax = 0;
        for (int r = 0; r < rows; r++) nmax = nvis[i0 + r] > nmax ? nvis[i0 + r] : nmax;
        rows_times_t(gb + i0 * D, rows, D, vt, kpad, nmax, dprow);
        for (int r = 0; r < rows; r++) {
            int64_t i = i0 + r, n = nvis[i];
            const float *p = pb + i * K, *dp = dprow + r * kpad;
            float *s = ds + r * kpad, dl = 0.0f;
            for (int64_t d = 0; d < D; d++) dl += gb[i * D + d] * ob[i * D + d];
            for (int64_t j = 0; j < n; j++) s[j] = p[j] * (dp[j] - dl);
            for (int64_t j = n; j < kpad; j++) s[j] = 0.0f;
            if (db) {
                float *dr = db + i * K;
                if (first) {
                    memcpy(dr, s, sizeof(float) * (size_t)n);
                    memset(dr + n, 0, sizeof(float) * (size_t)(K - n));
                } else {
                    for (int64_t j = 0; j < n; j++) dr[j] += s[j];
                }
            }
        }
        rows_times(ds, kpad, rows, nmax, kb, D, scale, dqb + i0 * D, 0);
        accumulate_t(ds, kpad, rows, nmax, qb + i0 * D, D, dkb);
        accumulate_t(pb + i0 * K, K, rows, nmax, gb + i0 * D, D, dvb);
    }
    for (int64_t t = 0; t < K * D; t++) dkb[t] *= scale;
}

#undef vload
#undef vstore
#undef vset
#undef vexp
#undef transpose_pad
#undef rows_times_t
#undef rows_times
#undef accumulate_t
#undef round8
#undef softmax_row
#endif
