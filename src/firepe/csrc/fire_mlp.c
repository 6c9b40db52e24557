/* Pieces of a ReLU MLP on an ascending grid (see firepe/positions/fire_mlp.py for the math).
 *
 * On piece p (grid points starts[p] .. starts[p + 1] - 1) a layer's pre-activation is affine in x:
 * z[t, k] = x[t] * alpha[p, k] + beta[p, k] (two roundings). For fixed p and k it is monotone in t
 * (x ascending, rounding monotone), so the ReLU mask z > 0 flips at most once inside the piece; a
 * bisection finds where. fire_mlp_split cuts every piece at its neurons' flips and returns the new
 * pieces: their first points, the piece each came from, and each one's mask (1.0 / 0.0, evaluated at
 * its first point, constant on it).
 */
#include <stdint.h>

static int on(float x, float a, float b) {
    float z = x * a;
    return z + b > 0.0f;
}

/* Returns the number of new pieces, or -1 when more than cap would be needed. */
int64_t fire_mlp_split(const float *x, int64_t G, const int64_t *starts, int64_t P, const float *alpha,
                       const float *beta, int64_t W, int64_t *new_starts, int64_t *parent, float *masks, int64_t cap) {
    int64_t n = 0;
    for (int64_t p = 0; p < P; p++) {
        int64_t s = starts[p], e = p + 1 < P ? starts[p + 1] : G; /* points s .. e - 1 */
        const float *a = alpha + p * W, *b = beta + p * W;
        if (n >= cap) return -1;
        int64_t first = n;
        new_starts[n] = s;
        parent[n++] = p;
        for (int64_t k = 0; k < W; k++) {
            int m0 = on(x[s], a[k], b[k]);
            if (on(x[e - 1], a[k], b[k]) == m0) continue;
            int64_t lo = s, hi = e - 1; /* mask(lo) == m0 != mask(hi) */
            while (hi - lo > 1) {
                int64_t mid = lo + (hi - lo) / 2;
                if (on(x[mid], a[k], b[k]) == m0) lo = mid; else hi = mid;
            }
            int64_t j = n; /* insert hi, keeping new_starts[first .. n) sorted and unique */
            while (j > first && new_starts[j - 1] > hi) j--;
            if (new_starts[j - 1] == hi) continue;
            if (n >= cap) return -1;
            for (int64_t i = n; i > j; i--) new_starts[i] = new_starts[i - 1];
            new_starts[j] = hi;
            parent[n++] = p;
        }
    }
    for (int64_t i = 0; i < n; i++) {
        const float *a = alpha + parent[i] * W, *b = beta + parent[i] * W;
        for (int64_t k = 0; k < W; k++) masks[i * W + k] = (float)on(x[new_starts[i]], a[k], b[k]);
    }
    return n;
}

/* out[h, t] = x[t] * alpha[p, h] + beta[p, h] for t in piece p; out is [H, G]. */
void fire_mlp_eval(const float *x, int64_t G, const int64_t *starts, int64_t P, const float *alpha,
                   const float *beta, int64_t H, float *out) {
    for (int64_t h = 0; h < H; h++)
        for (int64_t p = 0; p < P; p++) {
            int64_t s = starts[p], e = p + 1 < P ? starts[p + 1] : G;
            float a = alpha[p * H + h], b = beta[p * H + h];
            float *o = out + h * G;
            for (int64_t t = s; t < e; t++) {
                float z = x[t] * a;
                o[t] = z + b;
            }
        }
}

/* d alpha[p, h] = sum_{t in p} grad[h, t] x[t], d beta[p, h] = sum_{t in p} grad[h, t] (t ascending). */
void fire_mlp_eval_backward(const float *x, int64_t G, const int64_t *starts, int64_t P, const float *grad,
                            int64_t H, float *dalpha, float *dbeta) {
    for (int64_t h = 0; h < H; h++)
        for (int64_t p = 0; p < P; p++) {
            int64_t s = starts[p], e = p + 1 < P ? starts[p + 1] : G;
            const float *g = grad + h * G;
            float sa = 0.0f, sb = 0.0f;
            for (int64_t t = s; t < e; t++) {
                float gx = g[t] * x[t];
                sa += gx;
                sb += g[t];
            }
            dalpha[p * H + h] = sa;
            dbeta[p * H + h] = sb;
        }
}
