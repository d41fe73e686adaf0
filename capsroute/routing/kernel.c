/* Procedure 1 for float32 predictions u (B, I, J, D): rows u[b, i] of J x D contiguous floats,
   any batch and input-capsule strides. J (PARENTS) and D (DIM, a multiple of 8) are fixed at
   compile time. Each example is routed on its own; every iteration is one sweep over its u,
   tile by tile of TILE input capsules, forward (agreement, softmax, weighted sum) and backward
   (agreement, softmax derivative, weighted sum). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef int64_t i64;
typedef float vf __attribute__((vector_size(32)));
#define J PARENTS
#define D DIM
#define V (DIM / 8)
#define TILE 64
#define SQUASH_EPS 1e-12f

static inline vf load(const float *p) { vf x; memcpy(&x, p, sizeof x); return x; }
static inline void store(float *p, vf x) { memcpy(p, &x, sizeof x); }
static inline float hsum(vf x) {
    float s = 0.0f;
    for (int l = 0; l < 8; l++) s += x[l];
    return s;
}
static inline float dot(const float *a, const float *b) {
    vf acc = load(a) * load(b);
    for (int q = 1; q < V; q++) acc += load(a + 8 * q) * load(b + 8 * q);
    return hsum(acc);
}
/* (hsum x0, ..., hsum x7) */
#if defined(__clang__)
#define SHUFFLE(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
typedef int32_t vi __attribute__((vector_size(32)));
#define SHUFFLE(a, b, ...) __builtin_shuffle(a, b, (vi){__VA_ARGS__})
#endif
static inline vf hsum8(vf x0, vf x1, vf x2, vf x3, vf x4, vf x5, vf x6, vf x7) {
#define HADD(a, b) \
    (SHUFFLE(a, b, 0, 2, 8, 10, 4, 6, 12, 14) + SHUFFLE(a, b, 1, 3, 9, 11, 5, 7, 13, 15))
    vf t0 = HADD(x0, x1), t1 = HADD(x2, x3), t2 = HADD(x4, x5), t3 = HADD(x6, x7);
    vf u0 = HADD(t0, t1), u1 = HADD(t2, t3);
#undef HADD
    return SHUFFLE(u0, u1, 0, 1, 2, 3, 8, 9, 10, 11) + SHUFFLE(u0, u1, 4, 5, 6, 7, 12, 13, 14, 15);
}
/* out[t] = u[i0 + t, j, :] . w for t in [0, n): rows of u at stride si */
static void dots(const float *uj, i64 si, const float *w, i64 n, float *out) {
    vf wv[V];
    for (int q = 0; q < V; q++) wv[q] = load(w + 8 * q);
    i64 t = 0;
    for (; t + 8 <= n; t += 8) {
        vf x[8];
        for (int l = 0; l < 8; l++) {
            const float *row = uj + (t + l) * si;
            x[l] = load(row) * wv[0];
            for (int q = 1; q < V; q++) x[l] += load(row + 8 * q) * wv[q];
        }
        store(out + t, hsum8(x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7]));
    }
    for (; t < n; t++) out[t] = dot(uj + t * si, w);
}
/* acc[j] += w * x for one row of D */
static inline void axpy(vf *acc, float w, const float *x) {
    for (int q = 0; q < V; q++) acc[q] += w * load(x + 8 * q);
}

/* e^x for x <= 0 (softmax arguments less their maximum): Cephes expf, relative error below
   2e-7, without branches so that the loops over it vectorise. */
static inline float exp_nonpositive(float x) {
    x = x < -87.0f ? -87.0f : x;
    float n = floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* c[j, i] = softmax over j of logits[j, i] for i in [i0, i1); both (J, I). leaky: a constant
   logit 0 joins the softmax and its share is dropped, c = e^b / (1 + sum_j e^b_j). */
static void softmax_tile(const float *logits, float *c, i64 I, i64 i0, i64 i1, int leaky) {
    float mx[TILE], sum[TILE];
    i64 n = i1 - i0;
    for (i64 t = 0; t < n; t++) { mx[t] = logits[i0 + t]; sum[t] = 0.0f; }
    for (int j = 1; j < J; j++) {
        const float *row = logits + j * I + i0;
        for (i64 t = 0; t < n; t++) mx[t] = row[t] > mx[t] ? row[t] : mx[t];
    }
    if (leaky)
        for (i64 t = 0; t < n; t++) {
            mx[t] = mx[t] > 0.0f ? mx[t] : 0.0f;
            sum[t] = exp_nonpositive(-mx[t]);
        }
    for (int j = 0; j < J; j++) {
        const float *row = logits + j * I + i0;
        float *out = c + j * I + i0;
        for (i64 t = 0; t < n; t++) { out[t] = exp_nonpositive(row[t] - mx[t]); sum[t] += out[t]; }
    }
    for (int j = 0; j < J; j++) {
        float *out = c + j * I + i0;
        for (i64 t = 0; t < n; t++) out[t] = out[t] / sum[t];
    }
}

static void squash_rows(const float *s, float *v) {
    for (int j = 0; j < J; j++) {
        float n = dot(s + j * D, s + j * D);
        float scale = n / (1.0f + n) / sqrtf(n + SQUASH_EPS);
        for (int d = 0; d < D; d++) v[j * D + d] = s[j * D + d] * scale;
    }
}

/* dL/ds from dL/dv for v = squash(s): f(n) g + 2 f'(n) (g . s) s with n = |s|^2. */
static void squash_backward_rows(const float *s, const float *g, float *out) {
    for (int j = 0; j < J; j++) {
        const float *sj = s + j * D, *gj = g + j * D;
        float n = dot(sj, sj), gs = dot(gj, sj);
        float q = sqrtf(n + SQUASH_EPS), one_n = 1.0f + n;
        float f = n / (one_n * q);
        float df = 1.0f / (one_n * one_n * q) - n / (2.0f * one_n * q * q * q);
        for (int d = 0; d < D; d++) out[j * D + d] = f * gj[d] + 2.0f * df * gs * sj[d];
    }
}

/* s += sum over i in [i0, i1) of w[j, i] u[i, j, :] */
static void weighted_sum_tile(const float *ub, i64 si, const float *w, i64 I, i64 i0, i64 i1,
                              float *s) {
    vf part[J * V];
    memset(part, 0, sizeof part);
    for (i64 i = i0; i < i1; i++) {
        const float *ui = ub + i * si;
        for (int j = 0; j < J; j++) axpy(part + j * V, w[j * I + i], ui + j * D);
    }
    for (int j = 0; j < J; j++)
        for (int q = 0; q < V; q++) {
            float *sq = s + j * D + 8 * q;
            store(sq, load(sq) + part[j * V + q]);
        }
}

/* dst (I, J, D) contiguous = the rows of one example, src + i * si: every further sweep reads
   the copy, which stays in the cache (rows at a large power-of-two-like stride map onto few
   cache sets and evict each other). */
static void gather(float *dst, const float *src, i64 si, i64 I) {
    for (i64 i = 0; i < I; i++) memcpy(dst + i * J * D, src + i * si, sizeof(float) * J * D);
}

/* Examples [b0, b1) of B: c (r, B, J, I), s and v (r, B, J, D) written; delta (B, r) or NULL:
   per example and iteration, the sum over (j, i) of |u_ji . v_j|; bias (J, D) or NULL; init
   (B, J, I) or NULL: the starting logits (zeros); leaky: leaky couplings (softmax_tile).
   Returns 0, or 1 when out of memory. The backward pass is the same with or without the leak:
   dc_j/db_k = c_j (delta_jk - c_k) either way. */
int routing_forward(const float *u, i64 B, i64 I, i64 sb, i64 si, i64 b0, i64 b1, i64 r,
                    int leaky, const float *bias, const float *init, float *c_all, float *s_all,
                    float *v_all, double *delta) {
    float *logits = malloc(sizeof(float) * J * I), *ub = malloc(sizeof(float) * I * J * D);
    if (!logits || !ub) { free(logits); free(ub); return 1; }
    for (i64 b = b0; b < b1; b++) {
        gather(ub, u + b * sb, si, I);
        if (init) memcpy(logits, init + b * J * I, sizeof(float) * J * I);
        else memset(logits, 0, sizeof(float) * J * I);
        float *c0 = c_all + b * J * I, *s0 = s_all + b * J * D;
        memset(s0, 0, sizeof(float) * J * D);
        for (i64 i0 = 0; i0 < I; i0 += TILE) {
            i64 i1 = i0 + TILE < I ? i0 + TILE : I;
            softmax_tile(logits, c0, I, i0, i1, leaky);
            weighted_sum_tile(ub, J * D, c0, I, i0, i1, s0);
        }
        if (bias) for (int e = 0; e < J * D; e++) s0[e] += bias[e];
        for (i64 k = 0; k < r; k++) {
            const float *s = s_all + (k * B + b) * J * D;
            float *v = v_all + (k * B + b) * J * D;
            squash_rows(s, v);
            int next = k + 1 < r;
            if (!next && !delta) break;
            float *cn = next ? c_all + ((k + 1) * B + b) * J * I : NULL;
            float *sn = next ? s_all + ((k + 1) * B + b) * J * D : NULL;
            if (sn) memset(sn, 0, sizeof(float) * J * D);
            double dsum = 0.0;
            for (i64 i0 = 0; i0 < I; i0 += TILE) {
                i64 i1 = i0 + TILE < I ? i0 + TILE : I;
                for (int j = 0; j < J; j++) { /* b_ji += u_ji . v_j */
                    float a[TILE];
                    dots(ub + i0 * J * D + j * D, J * D, v + j * D, i1 - i0, a);
                    if (delta) for (i64 t = 0; t < i1 - i0; t++) dsum += fabsf(a[t]);
                    if (next) for (i64 t = 0; t < i1 - i0; t++) logits[j * I + i0 + t] += a[t];
                }
                if (!next) continue;
                softmax_tile(logits, cn, I, i0, i1, leaky);
                weighted_sum_tile(ub, J * D, cn, I, i0, i1, sn);
            }
            if (sn && bias) for (int e = 0; e < J * D; e++) sn[e] += bias[e];
            if (delta) delta[b * r + k] = dsum;
        }
    }
    free(logits);
    free(ub);
    return 0;
}

/* Backward for examples [b0, b1): every element of grad_u[b] (B, I, J, D; strides gb, gi and
   rows of J x D contiguous) written, and grad_bias[b] (B, J, D) += sum over the iterations
   gone through of dL/ds_k. through_all = 0: only the last iteration (grad="last"). */
int routing_backward(const float *u, i64 B, i64 I, i64 sb, i64 si, i64 b0, i64 b1, i64 r,
                     int through_all, const float *c_all, const float *s_all,
                     const float *v_all, const float *grad_v, float *grad_u, i64 gb, i64 gi,
                     float *grad_bias) {
    i64 first = through_all ? 0 : r - 1;
    /* gl[k] (J, I), k in [first, r - 2]: dL/db_k; gs[k] (J, D): dL/ds_k; A: sum_i gl u */
    float *gl = malloc(sizeof(float) * (r > 1 ? r - 1 : 1) * J * I);
    float *gs = malloc(sizeof(float) * r * J * D);
    float *A = malloc(sizeof(float) * J * D), *ub = malloc(sizeof(float) * I * J * D);
    if (!gl || !gs || !A || !ub) { free(gl); free(gs); free(A); free(ub); return 1; }
    for (i64 b = b0; b < b1; b++) {
        gather(ub, u + b * sb, si, I);
        float *gbias = grad_bias + b * J * D;
        const float *prev = NULL; /* dL/db_k of the iteration being undone (NULL: zeros) */
        for (i64 k = r - 1; k >= first; k--) {
            float *gsk = gs + k * J * D;
            const float *gout = k == r - 1 ? grad_v + b * J * D : A;
            squash_backward_rows(s_all + (k * B + b) * J * D, gout, gsk);
            for (int e = 0; e < J * D; e++) gbias[e] += gsk[e];
            if (k == first) break;
            /* c_k = softmax(b_{k-1}): dL/db_{k-1} = dL/db_k + c (g - sum_j c g), g = u . dL/ds_k;
               and A = sum_i dL/db_{k-1} u, the dL/dv of the iteration before */
            const float *ck = c_all + (k * B + b) * J * I;
            float *next = gl + (k - 1) * J * I;
            memset(A, 0, sizeof(float) * J * D);
            for (i64 i0 = 0; i0 < I; i0 += TILE) {
                i64 i1 = i0 + TILE < I ? i0 + TILE : I;
                i64 n = i1 - i0;
                float g[J][TILE], m[TILE];
                for (i64 t = 0; t < n; t++) m[t] = 0.0f;
                for (int j = 0; j < J; j++) {
                    dots(ub + i0 * J * D + j * D, J * D, gsk + j * D, n, g[j]);
                    const float *cj = ck + j * I + i0;
                    for (i64 t = 0; t < n; t++) m[t] += cj[t] * g[j][t];
                }
                for (int j = 0; j < J; j++) {
                    const float *cj = ck + j * I + i0;
                    float *nj = next + j * I + i0;
                    if (prev) {
                        const float *pj = prev + j * I + i0;
                        for (i64 t = 0; t < n; t++) nj[t] = pj[t] + cj[t] * (g[j][t] - m[t]);
                    } else {
                        for (i64 t = 0; t < n; t++) nj[t] = cj[t] * (g[j][t] - m[t]);
                    }
                }
                weighted_sum_tile(ub, J * D, next, I, i0, i1, A);
            }
            prev = next;
        }
        /* grad u_ji = sum_k c_k[j, i] dL/ds_k[j] + sum_{k < r-1} dL/db_k[j, i] v_k[j] */
        for (i64 i = 0; i < I; i++) {
            float *out = grad_u + b * gb + i * gi;
            for (int j = 0; j < J; j++) {
                vf acc[V];
                memset(acc, 0, sizeof acc);
                for (i64 k = first; k < r; k++) {
                    axpy(acc, c_all[((k * B + b) * J + j) * I + i], gs + (k * J + j) * D);
                    if (k < r - 1)
                        axpy(acc, gl[(k * J + j) * I + i], v_all + ((k * B + b) * J + j) * D);
                }
                for (int q = 0; q < V; q++) store(out + j * D + 8 * q, acc[q]);
            }
        }
    }
    free(gl); free(gs); free(A); free(ub);
    return 0;
}
