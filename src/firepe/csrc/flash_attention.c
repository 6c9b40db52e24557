/* Flash-style causal attention with a position bias computed inside the kernel from small inputs,
 * forward and backward, on the CPU. No [H, Q, K] tensor is ever stored: scores live one block of
 * BQ x BK at a time, the forward keeps an online softmax (running max m_i and sum l_i), the backward
 * recomputes the scores from the saved log-sum-exp and accumulates every gradient directly.
 *
 * Positions are contiguous ranges: query row i is at position q0 + i, key j at k0 + j; query i sees keys
 * j < nvis_i = clamp(q0 + i - k0 + 1, 0, K) (causal, and the KV-cache rule when Q < K). Distance d = q0 + i - k0 - j.
 * Per batch b and head h the logit is
 *     s_ij = scale * q_i . k_j + bias_ij,
 *     bias_ij = T[h, d]                                   (rows that read the distance table, long_i = 0)
 *             | Tg[h, k] + (Tg[h, k + 1] - Tg[h, k]) w    (interpolating rows, long_i = 1; Tg = T[h, base:]),
 *                 x = psi[d] * inv_norm[i], p = clamp(x, 0, 1) (G - 1), k = min(floor(p), G - 2), w = p - k
 *             (+ cq[b, h, i] - ck[b, h, j] when given: FoX's data bias)
 * (ALiBi, Kerple, T5 and Sandwich are a distance table; FIRE's table mode both parts; no table: 0).
 * Forward: P = softmax_j(s) over visible keys, out_i = sum_j P_ij v_j, lse_i = m_i + log l_i
 * (rows with no visible key: out 0, lse +inf). Backward with dO: delta_i = dO_i . out_i,
 * dP_ij = dO_i . v_j, dS_ij = P_ij (dP_ij - delta_i) with P_ij = exp(s_ij - lse_i);
 * dq = scale dS k, dk = scale dS^T q, dv = P^T dO, and for the bias:
 *     dT[h, d] += dS (distance rows); dTg[h, k] += dS (1 - w), dTg[h, k + 1] += dS w,
 *     gx = dS (Tg[k + 1] - Tg[k]) (G - 1) [0 <= x <= 1],  dpsi[d] += gx inv_norm[i],  dinv_norm[i] += gx psi[d];
 *     dcq[b, h, i] = sum_j dS_ij, dck[b, h, j] = -sum_i dS_ij.
 *
 * Layouts (float32): q, out, dout, dq [B, H, Q, D], k, v, dk, dv [B, H, K, D], each with its own batch, head and
 * row strides (strides[8][3]; the last dimension contiguous), table [H, M], psi [P], inv_norm [Q],
 * long_row [Q] uint8, cq [B, H, Q], ck [B, H, K]; gradients of the table, psi and inv_norm are summed over
 * b (and h) after the parallel loop in a fixed order.
 *
 * Determinism: every product is a fused multiply-add over 16-float vectors, every output element is summed
 * in one fixed order (key index, then block), and the work is split over (b, h) only, so results do not
 * depend on the thread count; the x86-64-v4 (AVX-512) and x86-64-v3 (AVX2 + FMA) variants run the same
 * operations on the same 16 lanes, so they agree bit for bit. A CPU without FMA gets no variant
 * (flash_attention_select returns -1) and the caller uses the materializing kernel.
 * Both entry points return 0, or 1 when a per-thread buffer could not be allocated (outputs incomplete).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#ifndef FLASH_BODY
#define FLASH_BODY
#define INLINE static inline __attribute__((always_inline))
#define BQ 64        /* query rows per block */
#define BK 64        /* keys per block: 4 vectors */
#define PAD 128      /* zero floats after each reversed table: reads past the last distance stay inside */
typedef float v16 __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));

/* Everything one call needs, shared by the variants. */
typedef struct {
    const float *q, *k, *v;
    int64_t B, H, Q, K, D, DP; /* DP: D rounded up to 16 */
    int64_t q0, k0;
    float scale;
    const float *table; /* [H, M] or NULL */
    int64_t M, base, grid;
    const float *psi_rev; /* psi reversed, [n_psi + PAD]: psi[d] = psi_rev[n_psi - 1 - d] */
    int64_t n_psi;
    const float *inv_norm;
    const uint8_t *long_row; /* NULL: no interpolating row */
    const float *cq, *ck;    /* NULL: no data bias */
    const int64_t *st;       /* [8][3]: batch, head and row strides of q, k, v, out, dout, dq, dk, dv (floats) */
} problem;

enum { TQ, TK, TV, TOUT, TDOUT, TDQ, TDK, TDV };
/* where tensor t's rows of (b, h) = bh start, and its row stride */
#define OFF(p, t, bh) (((bh) / (p)->H) * (p)->st[3 * (t)] + ((bh) % (p)->H) * (p)->st[3 * (t) + 1])
#define RS(p, t) ((p)->st[3 * (t) + 2])

/* Where the backward's bias-gradient accumulators start in a thread's scratch (after the packed tensors, the block
 * buffers, the reversed table, the row statistics and the dk/dv accumulators: backward_bh's layout). */
static int64_t bias_acc_offset(const problem *p) {
    int64_t kp = (p->K + BK - 1) / BK * BK, qp = (p->Q + BQ - 1) / BQ * BQ, DP = p->DP;
    return 3 * DP * kp + BQ * DP + 5 * BQ * BK + (p->base + PAD) + 4 * BQ + 2 * qp * DP + 2 * kp * DP;
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(FIREPE_NO_VARIANTS)
#define X86_VARIANTS 1
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v4")
#define VARIANT(name) name##_v4
#define TILE_ROWS 4
#include __FILE__
#undef TILE_ROWS
#undef VARIANT
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v3")
#define VARIANT(name) name##_v3
#define TILE_ROWS 2
#include __FILE__
#undef TILE_ROWS
#undef VARIANT
#pragma GCC pop_options
#elif !defined(__x86_64__)
#define X86_VARIANTS 0
#define VARIANT(name) name##_gen
#define TILE_ROWS 2
#include __FILE__
#undef TILE_ROWS
#undef VARIANT
#else
#define X86_VARIANTS 0
#endif

typedef void (*forward_fn)(const problem *, int64_t, float *, float *, float *);
typedef void (*backward_fn)(const problem *, int64_t, int64_t, int64_t, float *, const float *, const float *,
                            const float *, float *, float *, float *, float *, float *, float *);
static forward_fn forward_impl = NULL;
static backward_fn backward_impl = NULL;

/* The variant to run: 4 (x86-64-v4), 3 (x86-64-v3), 1 (a CPU that is not x86-64: portable FMA code), or -1
 * (an x86-64 CPU without FMA, or a capped choice: no variant). cap (FIREPE_SIMD) limits it as in
 * bias_attention.c. */
int flash_attention_select(int cap) {
#if X86_VARIANTS
    __builtin_cpu_init();
    if (cap >= 4 && __builtin_cpu_supports("x86-64-v4")) {
        forward_impl = forward_bh_v4;
        backward_impl = backward_item_v4;
        return 4;
    }
    if (cap >= 3 && __builtin_cpu_supports("x86-64-v3")) {
        forward_impl = forward_bh_v3;
        backward_impl = backward_item_v3;
        return 3;
    }
    forward_impl = NULL;
    backward_impl = NULL;
    return -1;
#elif !defined(__x86_64__)
    (void)cap;
    forward_impl = forward_bh_gen;
    backward_impl = backward_item_gen;
    return 1;
#else
    (void)cap;
    return -1;
#endif
}

static void setup(problem *p, const float *q, const float *k, const float *v, int64_t B, int64_t H, int64_t Q,
                  int64_t K, int64_t D, int64_t q0, int64_t k0, float scale, const float *table, int64_t M,
                  int64_t base, int64_t grid, const float *psi_rev, int64_t n_psi, const float *inv_norm,
                  const uint8_t *long_row, const float *cq, const float *ck, const int64_t *st) {
    p->q = q; p->k = k; p->v = v;
    p->B = B; p->H = H; p->Q = Q; p->K = K; p->D = D; p->DP = (D + 15) / 16 * 16;
    p->q0 = q0; p->k0 = k0; p->scale = scale;
    p->table = table; p->M = M; p->base = base; p->grid = grid;
    p->psi_rev = psi_rev; p->n_psi = n_psi; p->inv_norm = inv_norm; p->long_row = long_row;
    p->cq = cq; p->ck = ck; p->st = st;
}

/* Per-thread scratch: packed q/k/v/dO, transposed k/v, block buffers, reversed distance table and the
 * gradient accumulators of one (b, h). Sizes in floats. */
static int64_t scratch_floats(const problem *p, int backward) {
    int64_t kp = (p->K + BK - 1) / BK * BK, qp = (p->Q + BQ - 1) / BQ * BQ, DP = p->DP;
    int64_t n = 2 * DP * kp                   /* kT, and v packed (forward) or vT (backward) */
                + (backward ? kp * DP : 0)    /* k packed (backward) */
                + BQ * DP                     /* o accumulator / dq accumulator */
                + 4 * BQ * BK                 /* s, p, coordinates (w, slope) */
                + BQ * BK                     /* int32 bin indices */
                + (p->base + PAD)             /* reversed distance table */
                + 4 * BQ;                     /* row statistics */
    if (backward)
        n += 2 * qp * DP                      /* q, dO packed */
             + 2 * kp * DP                    /* dk, dv accumulators */
             + (p->base + PAD) + (p->n_psi + PAD) + p->grid + 2 * BQ + p->Q; /* bias gradients */
    return (n + 64 + 15) / 16 * 16;
}

/* Each thread's scratch is kept between calls (OpenMP's threads persist) and grown when a call needs more:
 * a fresh allocation per call of a few hundred KiB is an mmap whose pages fault in again every time. A thread
 * keeps the largest scratch it has needed (linear in the keys: ~6 K x head size floats) for its lifetime. */
static __thread float *kept_scratch = NULL;
static __thread int64_t kept_floats = 0;

static float *thread_scratch(int64_t n) {
    if (n > kept_floats) {
        free(kept_scratch);
        kept_scratch = aligned_alloc(64, (size_t)n * sizeof(float)); /* n: a multiple of 16 floats */
        kept_floats = kept_scratch ? n : 0;
    }
    return kept_scratch;
}

/* Flush denormal results and inputs to zero in this thread while the kernel runs (x86: MXCSR's FTZ and DAZ),
 * restored after: a product of a tiny probability would otherwise cost a microcode assist per element. */
#if defined(__x86_64__)
#define FAST_FLOATS_ON unsigned int saved_csr = _mm_getcsr(); _mm_setcsr(saved_csr | 0x8040);
#define FAST_FLOATS_OFF _mm_setcsr(saved_csr);
#else
#define FAST_FLOATS_ON
#define FAST_FLOATS_OFF
#endif

int flash_attention_forward(const float *q, const float *k, const float *v, int64_t B, int64_t H, int64_t Q, int64_t K,
                            int64_t D, int64_t q0, int64_t k0, float scale, const float *table, int64_t M,
                            int64_t base, int64_t grid, const float *psi_rev, int64_t n_psi, const float *inv_norm,
                            const uint8_t *long_row, const float *cq, const float *ck, const int64_t *strides,
                            float *out, float *lse, int threads) {
    problem p;
    setup(&p, q, k, v, B, H, Q, K, D, q0, k0, scale, table, M, base, grid, psi_rev, n_psi, inv_norm, long_row, cq, ck,
          strides);
    if (!forward_impl) return 1;
    int64_t n = scratch_floats(&p, 0);
    int failed = 0;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads) reduction(|| : failed)
#endif
    {
        FAST_FLOATS_ON
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int64_t bh = 0; bh < B * H; bh++) {
            float *scratch = thread_scratch(n); /* here, not before the loop: a thread without work allocates nothing */
            if (!scratch) {
                failed = 1;
                continue;
            }
            forward_impl(&p, bh, scratch, out + OFF(&p, TOUT, bh), lse + bh * Q);
        }
        FAST_FLOATS_OFF
    }
    return failed;
}

/* The backward's work items: head h and a chunk of BATCH_CHUNK batch rows, whose bias gradients one thread sums in
 * batch order (one table-sized partial per item, not per batch row: FIRE's grid has 16,384 columns); fixed by B and
 * H, not by the thread count, so the sums do not depend on it. */
#define BATCH_CHUNK 8

/* Gradients: dq, dk, dv like q, k, v; d_table [H, M], d_psi [n_psi], d_inv [Q], dcq, dck like cq, ck (each NULL
 * when not wanted). part: H * ceil(B / BATCH_CHUNK) * (M + n_psi + Q) floats of per-item partial sums (NULL when
 * no table). */
int flash_attention_backward(const float *grad_out, const float *q, const float *k, const float *v, const float *out,
                             const float *lse, int64_t B, int64_t H, int64_t Q, int64_t K, int64_t D, int64_t q0,
                             int64_t k0, float scale, const float *table, int64_t M, int64_t base, int64_t grid,
                             const float *psi_rev, int64_t n_psi, const float *inv_norm, const uint8_t *long_row,
                             const float *cq, const float *ck, const int64_t *strides, float *dq, float *dk, float *dv,
                             float *d_table, float *d_psi, float *d_inv, float *dcq, float *dck, float *part,
                             int threads) {
    problem p;
    setup(&p, q, k, v, B, H, Q, K, D, q0, k0, scale, table, M, base, grid, psi_rev, n_psi, inv_norm, long_row, cq, ck,
          strides);
    if (!backward_impl) return 1;
    int64_t n = scratch_floats(&p, 1), per = M + n_psi + Q, chunks = (B + BATCH_CHUNK - 1) / BATCH_CHUNK;
    int failed = 0;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads) reduction(|| : failed)
#endif
    {
        FAST_FLOATS_ON
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int64_t item = 0; item < H * chunks; item++) {
            float *scratch = thread_scratch(n);
            if (!scratch) {
                failed = 1;
                continue;
            }
            int64_t h = item / chunks, b0 = item % chunks * BATCH_CHUNK;
            int64_t b1 = b0 + BATCH_CHUNK < B ? b0 + BATCH_CHUNK : B;
            backward_impl(&p, h, b0, b1, scratch, grad_out, out, lse, dq, dk, dv, dcq, dck,
                          part ? part + item * per : NULL);
        }
        FAST_FLOATS_OFF
    }
    if (failed || !part) return failed;
    /* fixed-order sums of the partials: over the chunks of a head for the table, over every item for psi and
     * inv_norm */
    if (d_table)
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static)
#endif
        for (int64_t h = 0; h < H; h++)
            for (int64_t m = 0; m < M; m++) {
                float s = 0.f;
                for (int64_t c = 0; c < chunks; c++) s += part[(h * chunks + c) * per + m];
                d_table[h * M + m] = s;
            }
    if (d_psi)
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static)
#endif
        for (int64_t d = 0; d < n_psi; d++) {
            float s = 0.f;
            for (int64_t it = 0; it < H * chunks; it++) s += part[it * per + M + d];
            d_psi[d] = s;
        }
    if (d_inv)
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static)
#endif
        for (int64_t i = 0; i < Q; i++) {
            float s = 0.f;
            for (int64_t it = 0; it < H * chunks; it++) s += part[it * per + M + n_psi + i];
            d_inv[i] = s;
        }
    return 0;
}

#else /* FLASH_BODY: one variant of the helpers and the per-(batch, head) functions */

#define F(name) VARIANT(name)

INLINE v16 F(ld)(const float *p) { v16 r; memcpy(&r, p, sizeof r); return r; }
INLINE void F(st)(float *p, v16 x) { memcpy(p, &x, sizeof x); }
INLINE v16 F(splat)(float x) { return (v16){x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x}; }
INLINE v16i F(splati)(int32_t x) { return (v16i){x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x}; }
INLINE v16 F(sel)(v16i m, v16 a, v16 b) { return (v16)(((v16i)a & m) | ((v16i)b & ~m)); }

INLINE v16 F(fma)(v16 a, v16 b, v16 c) {
#if defined(__AVX512F__)
    return (v16)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
#elif defined(__FMA__)
    union { v16 v; __m256 h[2]; } x = {a}, y = {b}, z = {c}, r;
    r.h[0] = _mm256_fmadd_ps(x.h[0], y.h[0], z.h[0]);
    r.h[1] = _mm256_fmadd_ps(x.h[1], y.h[1], z.h[1]);
    return r.v;
#else
    v16 r;
    for (int l = 0; l < 16; l++) r[l] = fmaf(a[l], b[l], c[l]);
    return r;
#endif
}

INLINE v16 F(gather)(const float *base, v16i idx) {
#if defined(__AVX512F__)
    return (v16)_mm512_i32gather_ps((__m512i)idx, base, 4);
#elif defined(__AVX2__)
    union { v16i v; __m256i h[2]; } i = {idx};
    union { v16 v; __m256 h[2]; } r;
    r.h[0] = _mm256_i32gather_ps(base, i.h[0], 4);
    r.h[1] = _mm256_i32gather_ps(base, i.h[1], 4);
    return r.v;
#else
    v16 r;
    for (int l = 0; l < 16; l++) r[l] = base[idx[l]];
    return r;
#endif
}

/* sum of the 16 lanes as a fixed tree (lane l + lane l + 8, then + 4, + 2, + 1): the same additions in every
 * variant, and 4 vector steps instead of 15 dependent scalar ones */
INLINE float F(hsum)(v16 x) {
    const v16i s8 = {8, 9, 10, 11, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15};
    const v16i s4 = {4, 5, 6, 7, 4, 5, 6, 7, 4, 5, 6, 7, 4, 5, 6, 7};
    const v16i s2 = {2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3};
    const v16i s1 = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
    x = x + __builtin_shuffle(x, s8);
    x = x + __builtin_shuffle(x, s4);
    x = x + __builtin_shuffle(x, s2);
    x = x + __builtin_shuffle(x, s1);
    return x[0];
}

INLINE v16 F(vmax)(v16 a, v16 b) { return F(sel)(a > b, a, b); }

/* largest lane (exact in any order) */
INLINE float F(hmax)(v16 x) {
    const v16i s8 = {8, 9, 10, 11, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15};
    const v16i s4 = {4, 5, 6, 7, 4, 5, 6, 7, 4, 5, 6, 7, 4, 5, 6, 7};
    const v16i s2 = {2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3};
    const v16i s1 = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
    x = F(vmax)(x, __builtin_shuffle(x, s8));
    x = F(vmax)(x, __builtin_shuffle(x, s4));
    x = F(vmax)(x, __builtin_shuffle(x, s2));
    x = F(vmax)(x, __builtin_shuffle(x, s1));
    return x[0];
}

/* exp(x) for x <= 0: Cody-Waite reduction x = n ln 2 + r, a degree-7 polynomial (Cephes' expf coefficients,
 * ~1 ulp), 2^n built in the exponent bits; NaN gives NaN; 0 below -87.3 (where expf leaves the normal floats: a probability
 * under 1.2e-38 is 0 here, so no denormal number -- 100x slower arithmetic on some CPUs -- enters the sums). */
INLINE v16 F(exp)(v16 x) {
    v16i finite = x > F(splat)(-87.33654f);
    v16 xc = F(sel)(x > F(splat)(-87.33654f), x, F(splat)(-87.33654f));
    const v16 magic = F(splat)(12582912.f); /* 1.5 * 2^23: rounds to the nearest integer */
    v16 t = F(fma)(xc, F(splat)(1.44269504088896341f), magic);
    v16 n = t - magic;
    v16 r = F(fma)(n, F(splat)(-0.693359375f), xc);
    r = F(fma)(n, F(splat)(2.12194440e-4f), r);
    v16 y = F(splat)(1.9875691500e-4f);
    y = F(fma)(y, r, F(splat)(1.3981999507e-3f));
    y = F(fma)(y, r, F(splat)(8.3334519073e-3f));
    y = F(fma)(y, r, F(splat)(4.1665795894e-2f));
    y = F(fma)(y, r, F(splat)(1.6666665459e-1f));
    y = F(fma)(y, r, F(splat)(5.0000001201e-1f));
    y = F(fma)(y, r * r, r + F(splat)(1.f));
    v16i e = ((v16i)t - (v16i)magic + F(splati)(127)) << 23;
    y = y * (v16)e;
    /* NaN stays NaN (a NaN score must not vanish from the softmax as a zero probability) */
    return F(sel)(x != x, x, (v16)((v16i)y & finite));
}

/* out[r, c] (+)= sum_{k < n} coef[r cr + k ck] * src[k ss + c], r < R, c < 16 NC (one register tile);
 * every element summed over k in order, whatever the tile. */
INLINE void F(tile)(const int R, const int NC, float *out, int64_t os, const float *coef, int64_t cr, int64_t ck,
                    const float *src, int64_t ss, int64_t n, int acc) {
    v16 a[4][4];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int c = 0; c < NC; c++) a[r][c] = acc ? F(ld)(out + r * os + 16 * c) : F(splat)(0.f);
    for (int64_t k = 0; k < n; k++) {
        v16 b[4];
#pragma GCC unroll 4
        for (int c = 0; c < NC; c++) b[c] = F(ld)(src + k * ss + 16 * c);
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            v16 x = F(splat)(coef[r * cr + k * ck]);
#pragma GCC unroll 4
            for (int c = 0; c < NC; c++) a[r][c] = F(fma)(x, b[c], a[r][c]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int c = 0; c < NC; c++) F(st)(out + r * os + 16 * c, a[r][c]);
}

#define TILE_CASE(R, NC) F(tile)(R, NC, o, os, cf, cr, ck, src + 16 * c, ss, n, acc)
/* out [rows, 16 nv] (+)= coef [rows, n] (strides cr, ck) x src [n, 16 nv] (row stride ss) */
static void F(gemm)(float *out, int64_t os, const float *coef, int64_t cr, int64_t ck, const float *src, int64_t ss,
                    int64_t rows, int64_t nv, int64_t n, int acc) {
    for (int64_t r0 = 0; r0 < rows; r0 += TILE_ROWS) {
        int R = rows - r0 < TILE_ROWS ? (int)(rows - r0) : TILE_ROWS;
        const float *cf = coef + r0 * cr;
        for (int64_t c = 0; c < nv; c += 4) {
            int NC = nv - c < 4 ? (int)(nv - c) : 4;
            float *o = out + r0 * os + 16 * c;
            switch (R * 8 + NC) {
            case 4 * 8 + 4: TILE_CASE(4, 4); break;
            case 4 * 8 + 3: TILE_CASE(4, 3); break;
            case 4 * 8 + 2: TILE_CASE(4, 2); break;
            case 4 * 8 + 1: TILE_CASE(4, 1); break;
            case 3 * 8 + 4: TILE_CASE(3, 4); break;
            case 3 * 8 + 3: TILE_CASE(3, 3); break;
            case 3 * 8 + 2: TILE_CASE(3, 2); break;
            case 3 * 8 + 1: TILE_CASE(3, 1); break;
            case 2 * 8 + 4: TILE_CASE(2, 4); break;
            case 2 * 8 + 3: TILE_CASE(2, 3); break;
            case 2 * 8 + 2: TILE_CASE(2, 2); break;
            case 2 * 8 + 1: TILE_CASE(2, 1); break;
            case 1 * 8 + 4: TILE_CASE(1, 4); break;
            case 1 * 8 + 3: TILE_CASE(1, 3); break;
            case 1 * 8 + 2: TILE_CASE(1, 2); break;
            default: TILE_CASE(1, 1); break;
            }
        }
    }
}
#undef TILE_CASE

/* copy rows [n, D] (row stride rs) into [n, DP] with zero columns D..DP-1 */
static void F(pack_rows)(float *dst, const float *src, int64_t rs, int64_t n, int64_t D, int64_t DP) {
    for (int64_t i = 0; i < n; i++) {
        memcpy(dst + i * DP, src + i * rs, sizeof(float) * (size_t)D);
        for (int64_t d = D; d < DP; d++) dst[i * DP + d] = 0.f;
    }
}

/* src [n, D] -> dst: per block of BK keys a transposed tile [DP, BK] (block b at b * DP * BK; zero past n and
 * past D), so that one block's scores read 16 KiB of consecutive memory, not 64 rows a power of two apart */
static void F(pack_t)(float *dst, const float *src, int64_t rs, int64_t n, int64_t kp, int64_t D, int64_t DP) {
    memset(dst, 0, sizeof(float) * (size_t)(DP * kp));
    for (int64_t j0 = 0; j0 < n; j0 += BK) {
        int64_t je = j0 + BK < n ? j0 + BK : n;
        float *tile = dst + j0 * DP;
        for (int64_t d = 0; d < D; d++)
            for (int64_t j = j0; j < je; j++) tile[d * BK + (j - j0)] = src[j * rs + d];
    }
}

/* The reversed distance columns of head h: rev[x] = T[h, base - 1 - x] for x < base, 0 for the PAD after. */
static void F(reverse_table)(float *rev, const problem *p, int64_t h) {
    const float *T = p->table + h * p->M;
    for (int64_t x = 0; x < p->base; x++) rev[x] = T[p->base - 1 - x];
    for (int64_t x = p->base; x < p->base + PAD; x++) rev[x] = 0.f;
}

/* Row r (query i) of a score block: s[t] = scale * s[t] + bias(i, j0 + t), -inf for t >= vis (the keys it does
 * not see). With coords, interpolating rows also store the bin k, the weight w and the slope for the backward. */
INLINE void F(bias_row)(const problem *p, int64_t bh, int64_t i, int64_t j0, int64_t vis, float *s, const float *rev,
                        const float *tg, int32_t *kbin, float *wt, float *slope) {
    const v16 scale = F(splat)(p->scale);
    v16 x[4];
    for (int c = 0; c < 4; c++) x[c] = F(ld)(s + 16 * c) * scale;
    int64_t dist0 = p->q0 + i - p->k0 - j0; /* distance to key j0 (>= 0: the row sees it) */
    if (p->table) {
        if (p->long_row && p->long_row[i]) {
            const float *pr = p->psi_rev + (p->n_psi - 1 - dist0);
            const v16 inv = F(splat)(p->inv_norm[i]), gm1 = F(splat)((float)(p->grid - 1));
            const v16i gm2 = F(splati)((int32_t)(p->grid - 2));
            for (int c = 0; c < 4; c++) {
                v16 xx = F(ld)(pr + 16 * c) * inv;
                v16 pc = F(sel)(xx > F(splat)(0.f), xx, F(splat)(0.f));
                pc = F(sel)(pc < F(splat)(1.f), pc, F(splat)(1.f)) * gm1;
                v16i kb = __builtin_convertvector(pc, v16i);
                kb = (v16i)F(sel)(kb < gm2, (v16)kb, (v16)gm2);
                v16 w = pc - __builtin_convertvector(kb, v16);
                v16 t0 = F(gather)(tg, kb), t1 = F(gather)(tg + 1, kb);
                v16 sl = t1 - t0;
                x[c] = x[c] + F(fma)(sl, w, t0);
                if (kbin) {
                    /* the coordinate's gradient factor (G - 1) [0 <= x <= 1], folded into the slope */
                    v16i inside = (xx >= F(splat)(0.f)) & (xx <= F(splat)(1.f));
                    memcpy(kbin + 16 * c, &kb, sizeof kb);
                    F(st)(wt + 16 * c, w);
                    F(st)(slope + 16 * c, (v16)((v16i)(sl * gm1) & inside));
                }
            }
        } else {
            const float *tr = rev + (p->base - 1 - dist0);
            for (int c = 0; c < 4; c++) x[c] = x[c] + F(ld)(tr + 16 * c);
        }
    }
    if (p->cq) {
        const v16 cqi = F(splat)(p->cq[bh * p->Q + i]);
        const float *ckr = p->ck + bh * p->K + j0;
        for (int c = 0; c < 4; c++) {
            v16 ckv;
            if (j0 + 16 * (c + 1) <= p->K) ckv = F(ld)(ckr + 16 * c);
            else {
                for (int l = 0; l < 16; l++) ckv[l] = j0 + 16 * c + l < p->K ? ckr[16 * c + l] : 0.f;
            }
            x[c] = x[c] + (cqi - ckv);
        }
    }
    for (int c = 0; c < 4; c++) {
        v16i lane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
        v16i vis_m = (lane + F(splati)(16 * c)) < F(splati)((int32_t)vis);
        F(st)(s + 16 * c, F(sel)(vis_m, x[c], F(splat)(-INFINITY)));
    }
}

INLINE int64_t F(nvis)(const problem *p, int64_t i) {
    int64_t n = p->q0 + i - p->k0 + 1;
    return n < 0 ? 0 : n > p->K ? p->K : n;
}

/* Forward of one (b, h): out [Q, D], lse [Q]. */
static void F(forward_bh)(const problem *p, int64_t bh, float *scratch, float *out, float *lse) {
    const int64_t Q = p->Q, K = p->K, D = p->D, DP = p->DP, NV = DP / 16;
    const int64_t kp = (K + BK - 1) / BK * BK;
    const float *q = p->q + OFF(p, TQ, bh), *k = p->k + OFF(p, TK, bh), *v = p->v + OFF(p, TV, bh);
    const int64_t qs = RS(p, TQ), os = RS(p, TOUT);
    float *kT = scratch, *vp = kT + DP * kp, *o = vp + kp * DP, *s = o + BQ * DP;
    float *wt = s + 2 * BQ * BK, *slope = wt + BQ * BK;
    int32_t *kbin = (int32_t *)(slope + BQ * BK);
    float *rev = (float *)(kbin + BQ * BK), *stat = rev + p->base + PAD;
    float *m = stat, *l = stat + BQ;
    const float *tg = p->table ? p->table + (bh % p->H) * p->M + p->base : NULL;
    F(pack_t)(kT, k, RS(p, TK), K, kp, D, DP);
    F(pack_rows)(vp, v, RS(p, TV), K, D, DP);
    if (p->table) F(reverse_table)(rev, p, bh % p->H);
    for (int64_t i0 = 0; i0 < Q; i0 += BQ) {
        int64_t nb = Q - i0 < BQ ? Q - i0 : BQ;
        int64_t kv_end = F(nvis)(p, i0 + nb - 1);
        for (int64_t r = 0; r < nb; r++) { m[r] = -INFINITY; l[r] = 0.f; }
        memset(o, 0, sizeof(float) * (size_t)(BQ * DP));
        for (int64_t j0 = 0; j0 < kv_end; j0 += BK) {
            int64_t nk = kv_end - j0 < BK ? kv_end - j0 : BK;
            /* s = q_block k_block^T, [nb, BK] (q read in place: D floats per row, zero padding comes from kT) */
            F(gemm)(s, BK, q + i0 * qs, qs, 1, kT + j0 * DP, BK, nb, BK / 16, D, 0);
            for (int64_t r = 0; r < nb; r++) {
                int64_t i = i0 + r, vis = F(nvis)(p, i) - j0;
                float *sr = s + r * BK;
                if (vis <= 0) {
                    memset(sr, 0, sizeof(float) * BK);
                    continue;
                }
                if (vis > nk) vis = nk;
                F(bias_row)(p, bh, i, j0, vis, sr, rev, tg, NULL, NULL, NULL);
                v16 mx = F(ld)(sr);
                for (int c = 1; c < 4; c++) {
                    v16 y = F(ld)(sr + 16 * c);
                    mx = F(sel)(y > mx, y, mx);
                }
                float mnew = F(hmax)(mx);
                if (m[r] > mnew) mnew = m[r];
                float alpha = m[r] == -INFINITY ? 0.f : expf(m[r] - mnew);
                /* every visible score -inf so far (a bias may say so): subtract 0, so exp gives 0, not NaN */
                v16 sum = F(splat)(0.f), mv = F(splat)(mnew == -INFINITY ? 0.f : mnew);
                for (int c = 0; c < 4; c++) {
                    v16 e = F(exp)(F(ld)(sr + 16 * c) - mv);
                    F(st)(sr + 16 * c, e);
                    sum = sum + e;
                }
                l[r] = l[r] * alpha + F(hsum)(sum);
                m[r] = mnew;
                if (alpha != 1.f) {
                    v16 av = F(splat)(alpha);
                    for (int64_t c = 0; c < NV; c++) F(st)(o + r * DP + 16 * c, F(ld)(o + r * DP + 16 * c) * av);
                }
            }
            /* o += p v_block */
            F(gemm)(o, DP, s, BK, 1, vp + j0 * DP, DP, nb, NV, nk, 1);
        }
        for (int64_t r = 0; r < nb; r++) {
            int64_t i = i0 + r;
            if (l[r] != 0.f) { /* 0 only when the row sees no key (its largest score gives exp(0) = 1); NaN stays */
                float inv = 1.f / l[r];
                for (int64_t d = 0; d < D; d++) out[i * os + d] = o[r * DP + d] * inv;
                lse[i] = m[r] + logf(l[r]);
            } else {
                for (int64_t d = 0; d < D; d++) out[i * os + d] = 0.f;
                lse[i] = INFINITY;
            }
        }
    }
}

/* Backward of one (b, h): dq [Q, D], dk, dv [K, D], dcq [Q], dck [K], the bias partials g_table [M] (distance
 * columns then grid), g_psi [n_psi], g_inv [Q] (NULL without a table). */
/* Backward of one (b, h): dq [Q, D], dk, dv [K, D], dcq [Q], dck [K]; the bias gradients are added to the item's
 * accumulators in the scratch (backward_item zeroes and writes them). */
static void F(backward_bh)(const problem *p, int64_t bh, float *scratch, const float *dout, const float *out,
                           const float *lse, float *dq, float *dk, float *dv, float *dcq, float *dck) {
    const int64_t Q = p->Q, K = p->K, D = p->D, DP = p->DP, NV = DP / 16;
    const int64_t kp = (K + BK - 1) / BK * BK, qp = (Q + BQ - 1) / BQ * BQ;
    const float *q = p->q + OFF(p, TQ, bh), *k = p->k + OFF(p, TK, bh), *v = p->v + OFF(p, TV, bh);
    const int64_t os = RS(p, TOUT), dos = RS(p, TDOUT), dqs = RS(p, TDQ), dks = RS(p, TDK), dvs = RS(p, TDV);
    float *kT = scratch, *vT = kT + DP * kp, *kpk = vT + DP * kp, *dqa = kpk + kp * DP, *s = dqa + BQ * DP;
    float *dp = s + BQ * BK, *wt = dp + BQ * BK, *slope = wt + BQ * BK;
    int32_t *kbin = (int32_t *)(slope + BQ * BK);
    float *rev = (float *)(kbin + BQ * BK), *stat = rev + p->base + PAD;
    float *lse_r = stat, *delta = stat + BQ;
    float *qpk = stat + 4 * BQ, *dop = qpk + qp * DP, *dka = dop + qp * DP, *dva = dka + kp * DP;
    float *gd_rev = scratch + bias_acc_offset(p); /* = dva + kp * DP */
    float *gpsi_rev = gd_rev + p->base + PAD, *gg = gpsi_rev + p->n_psi + PAD;
    float *rowg = gg + p->grid, *g_inv = rowg + 2 * BQ;
    const float *tg = p->table ? p->table + (bh % p->H) * p->M + p->base : NULL;
    F(pack_t)(kT, k, RS(p, TK), K, kp, D, DP);
    F(pack_t)(vT, v, RS(p, TV), K, kp, D, DP);
    F(pack_rows)(kpk, k, RS(p, TK), K, D, DP);
    F(pack_rows)(qpk, q, RS(p, TQ), Q, D, DP);
    F(pack_rows)(dop, dout, dos, Q, D, DP);
    memset(dka, 0, sizeof(float) * (size_t)(2 * kp * DP));
    if (p->table) F(reverse_table)(rev, p, bh % p->H);
    if (dck) memset(dck, 0, sizeof(float) * (size_t)K);
    for (int64_t i0 = 0; i0 < Q; i0 += BQ) {
        int64_t nb = Q - i0 < BQ ? Q - i0 : BQ;
        int64_t kv_end = F(nvis)(p, i0 + nb - 1);
        for (int64_t r = 0; r < nb; r++) {
            int64_t i = i0 + r;
            float dd = 0.f;
            for (int64_t d = 0; d < D; d++) dd += dout[i * dos + d] * out[i * os + d];
            delta[r] = dd;
            lse_r[r] = lse[i];
            rowg[r] = 0.f;          /* d inv_norm of the row */
            rowg[BQ + r] = 0.f;     /* d cq of the row */
        }
        memset(dqa, 0, sizeof(float) * (size_t)(BQ * DP));
        for (int64_t j0 = 0; j0 < kv_end; j0 += BK) {
            int64_t nk = kv_end - j0 < BK ? kv_end - j0 : BK;
            F(gemm)(s, BK, qpk + i0 * DP, DP, 1, kT + j0 * DP, BK, nb, BK / 16, DP, 0);
            F(gemm)(dp, BK, dop + i0 * DP, DP, 1, vT + j0 * DP, BK, nb, BK / 16, DP, 0);
            for (int64_t r = 0; r < nb; r++) {
                int64_t i = i0 + r, vis = F(nvis)(p, i) - j0;
                float *sr = s + r * BK, *dpr = dp + r * BK;
                if (vis <= 0) {
                    memset(sr, 0, sizeof(float) * BK);
                    memset(dpr, 0, sizeof(float) * BK);
                    continue;
                }
                if (vis > nk) vis = nk;
                int interp = p->table && p->long_row && p->long_row[i];
                F(bias_row)(p, bh, i, j0, vis, sr, rev, tg, interp ? kbin + r * BK : NULL, wt + r * BK,
                            slope + r * BK);
                v16 lv = F(splat)(lse_r[r]), dl = F(splat)(delta[r]), gsum = F(splat)(0.f);
                for (int c = 0; c < 4; c++) {
                    v16 pe = F(exp)(F(ld)(sr + 16 * c) - lv);
                    v16 ds = pe * (F(ld)(dpr + 16 * c) - dl);
                    F(st)(sr + 16 * c, pe);
                    F(st)(dpr + 16 * c, ds);
                    gsum = gsum + ds;
                }
                if (dcq) rowg[BQ + r] += F(hsum)(gsum);
                if (!p->table) continue;
                int64_t dist0 = p->q0 + i - p->k0 - j0;
                if (interp) {
                    /* table bins: scatter; psi and inv_norm: vectors */
                    float *gp = gpsi_rev + (p->n_psi - 1 - dist0);
                    const float *pr = p->psi_rev + (p->n_psi - 1 - dist0);
                    const v16 inv = F(splat)(p->inv_norm[i]);
                    v16 acc = F(splat)(0.f);
                    for (int c = 0; c < 4; c++) {
                        v16 gx = F(ld)(dpr + 16 * c) * F(ld)(slope + r * BK + 16 * c);
                        F(st)(gp + 16 * c, F(fma)(gx, inv, F(ld)(gp + 16 * c)));
                        acc = F(fma)(gx, F(ld)(pr + 16 * c), acc);
                    }
                    rowg[r] += F(hsum)(acc);
                    const int32_t *kb = kbin + r * BK;
                    const float *wr = wt + r * BK;
                    for (int64_t t0 = 0; t0 < vis; t0 += 16) {
                        int64_t te = t0 + 16 < vis ? t0 + 16 : vis;
#if defined(__AVX512F__)
                        /* 16 keys at once where their bins all differ (bins fall along the row, so neighbours are
                         * compared): gather, add, scatter to k, then to k + 1 -- each bin gets the same additions
                         * in the same order as the scalar loop, so both give the same bits */
                        if (te == t0 + 16) {
                            __m512i kv = _mm512_loadu_si512(kb + t0);
                            /* strictly falling bins: no two lanes share one (FIRE's psi rises with the distance;
                             * anything else, e.g. a hand-made psi, takes the scalar loop) */
                            if (_mm512_mask_cmpgt_epi32_mask(0x7fff, kv, _mm512_alignr_epi32(kv, kv, 1)) == 0x7fff) {
                                __m512 g = _mm512_loadu_ps(dpr + t0), gw = _mm512_mul_ps(g, _mm512_loadu_ps(wr + t0));
                                __m512 a = _mm512_add_ps(_mm512_i32gather_ps(kv, gg, 4), _mm512_sub_ps(g, gw));
                                _mm512_i32scatter_ps(gg, kv, a, 4);
                                __m512i k1 = _mm512_add_epi32(kv, _mm512_set1_epi32(1));
                                _mm512_i32scatter_ps(gg, k1, _mm512_add_ps(_mm512_i32gather_ps(k1, gg, 4), gw), 4);
                                continue;
                            }
                        }
#endif
                        /* runs of keys in one bin (far keys: several per bin) summed in registers, each run
                         * added once; runs end at the 16-key boundary in every variant, so a chunk of distinct
                         * bins gets exactly the additions of the AVX-512 path above */
                        int32_t cur = kb[t0];
                        float a0 = 0.f, a1 = 0.f;
                        for (int64_t t = t0; t < te; t++) {
                            if (kb[t] != cur) {
                                gg[cur] += a0;
                                gg[cur + 1] += a1;
                                cur = kb[t];
                                a0 = a1 = 0.f;
                            }
                            float g = dpr[t], gw = g * wr[t];
                            a0 += g - gw;
                            a1 += gw;
                        }
                        gg[cur] += a0;
                        gg[cur + 1] += a1;
                    }
                } else {
                    float *gr = gd_rev + (p->base - 1 - dist0);
                    for (int c = 0; c < 4; c++) F(st)(gr + 16 * c, F(ld)(gr + 16 * c) + F(ld)(dpr + 16 * c));
                }
            }
            /* dv += p^T dO, dk += dS^T q (unscaled), dq += dS k (unscaled) */
            F(gemm)(dva + j0 * DP, DP, s, 1, BK, dop + i0 * DP, DP, nk, NV, nb, 1);
            F(gemm)(dka + j0 * DP, DP, dp, 1, BK, qpk + i0 * DP, DP, nk, NV, nb, 1);
            F(gemm)(dqa, DP, dp, BK, 1, kpk + j0 * DP, DP, nb, NV, nk, 1);
            if (dck)
                for (int64_t r = 0; r < nb; r++)
                    for (int64_t t = 0; t < nk; t++) dck[j0 + t] -= dp[r * BK + t];
        }
        for (int64_t r = 0; r < nb; r++) {
            int64_t i = i0 + r;
            for (int64_t d = 0; d < D; d++) dq[i * dqs + d] = dqa[r * DP + d] * p->scale;
            if (dcq) dcq[i] = rowg[BQ + r];
            if (p->table) g_inv[i] += rowg[r];
        }
    }
    for (int64_t j = 0; j < K; j++)
        for (int64_t d = 0; d < D; d++) {
            dk[j * dks + d] = dka[j * DP + d] * p->scale;
            dv[j * dvs + d] = dva[j * DP + d];
        }
}

/* One work item: head h, batch rows b0..b1-1 in order; pt (NULL without a table) gets the item's bias gradient
 * partials [M + n_psi + Q]: the table's columns, psi's entries, inv_norm's entries. */
static void F(backward_item)(const problem *p, int64_t h, int64_t b0, int64_t b1, float *scratch, const float *dout,
                             const float *out, const float *lse, float *dq, float *dk, float *dv, float *dcq,
                             float *dck, float *pt) {
    const int64_t Q = p->Q, K = p->K;
    float *gd_rev = scratch + bias_acc_offset(p);
    float *gpsi_rev = gd_rev + p->base + PAD, *gg = gpsi_rev + p->n_psi + PAD, *g_inv = gg + p->grid + 2 * BQ;
    if (p->table) {
        memset(gd_rev, 0, sizeof(float) * (size_t)(p->base + PAD + p->n_psi + PAD + p->grid));
        memset(g_inv, 0, sizeof(float) * (size_t)Q);
    }
    for (int64_t b = b0; b < b1; b++) {
        int64_t bh = b * p->H + h;
        F(backward_bh)(p, bh, scratch, dout + OFF(p, TDOUT, bh), out + OFF(p, TOUT, bh), lse + bh * Q,
                       dq + OFF(p, TDQ, bh), dk + OFF(p, TDK, bh), dv + OFF(p, TDV, bh), dcq ? dcq + bh * Q : NULL,
                       dck ? dck + bh * K : NULL);
    }
    if (!pt) return;
    for (int64_t x = 0; x < p->base; x++) pt[x] = gd_rev[p->base - 1 - x];
    for (int64_t m = p->base; m < p->M; m++) pt[m] = 0.f;
    for (int64_t g = 0; g < p->grid; g++) pt[p->base + g] = gg[g];
    for (int64_t d = 0; d < p->n_psi; d++) pt[p->M + d] = gpsi_rev[p->n_psi - 1 - d];
    memcpy(pt + p->M + p->n_psi, g_inv, sizeof(float) * (size_t)Q);
}

#undef F
#endif /* FLASH_BODY */
