/* The mixture-of-experts feed-forward block of a few tokens (decode), experts kept in GGUF blocks (layers/moe.py):
 * routing, every chosen expert's SiLU MLP and the weighted sum, in one call.
 *
 * Why: in PyTorch a decode step's routing reads the chosen experts back to Python (a host sync), and each of a
 * token's k experts is two GEMV calls and an activation: 16 module calls a layer at top 8, none of it replayable
 * as a CPU decode graph. Here the experts are read from tables of their blocks' addresses, so the call is the same
 * whatever the router picks, and a decode step of a MoE model is kernel calls only (worker/cpu_graph.py).
 *
 * Routing as transformers and vLLM compute it: softmax over all experts in float32, the top k (ties: the lower
 * expert id), renormalized to sum to 1 where asked (Mixtral, Qwen3-MoE). Each (token, choice) pair is one row of
 * work: x quantized to 16 bits once a token (gguf_q16.h), gate|up rows of its expert (gate first), SiLU(gate) * up
 * quantized again, the down rows; the GEMVs' four-row groups of all pairs are one parallel loop, so two threads
 * share a token's eight experts evenly. out[t] = sum over choices c in order of w_c * y_c (+ sigmoid(g_t) *
 * shared[t]: Qwen2-MoE's shared expert, computed before by the caller).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "gguf.h"
#include "gguf_q16.h"

/* The k largest of p[0..n) (ties: the lower index), their ids and values in descending order. */
static void top_k(const float *p, int64_t n, int64_t k, int64_t *ids, float *values) {
    for (int64_t c = 0; c < k; ++c) {
        int64_t best = -1;
        for (int64_t e = 0; e < n; ++e) {
            int taken = 0;
            for (int64_t j = 0; j < c; ++j) taken |= ids[j] == e;
            if (!taken && (best < 0 || p[e] > p[best])) best = e;
        }
        ids[c] = best;
        values[c] = p[best];
    }
}

/* x, out float32 [m, hidden]; router float32 [experts, hidden] (its logits computed here), or NULL and logits
 * float32 [m, experts] the router's (a router in another dtype, multiplied by the caller); gate_up / down: each expert's blocks'
 * address ([experts] int64), matrices [2 inter, hidden] and [hidden, inter] of GGML types gate_up_type / down_type,
 * rows interleaved by gate_up_il / down_il (gguf.h); shared (or NULL) float32 [m, hidden], the shared expert's
 * output, gated by sigmoid(x . shared_gate_weight) (float32 [hidden]) or sigmoid(shared_gate_logits[t]) ([m]).
 * 0 done; 1 bad type, shape or layout; 2 out of memory. */
int gguf_moe(const float *x, const float *router, const float *logits, float *out, int64_t m, int64_t hidden,
             int64_t inter,
             int64_t experts, int64_t k, int renormalize, const int64_t *gate_up, int gate_up_type, int gate_up_il,
             const int64_t *down, int down_type, int down_il, const float *shared, const float *shared_gate_weight,
             const float *shared_gate_logits, int threads) {
    const int64_t gu_row_bytes = gguf_row_bytes(gate_up_type, hidden), down_row_bytes = gguf_row_bytes(down_type, inter);
    if (gu_row_bytes == 0 || down_row_bytes == 0 || k < 1 || k > experts || m < 1) return 1;
    if ((2 * inter) % GGUF_COLS || hidden % GGUF_COLS) return 1;
    if ((gate_up_il != 1 && gate_up_il != GGUF_COLS) || (down_il != 1 && down_il != GGUF_COLS)) return 1;
    const int64_t pairs = m * k, hb = hidden / GGUF_BLOCK, ib = inter / GGUF_BLOCK;
    /* one allocation: choices, weights, probabilities; x quantized; gate|up outputs; activations quantized; down
     * outputs */
    const size_t bytes = sizeof(int64_t) * pairs + sizeof(float) * (pairs + experts + m * experts)
                       + (2 * sizeof(int16_t) * hidden + 2 * sizeof(float) * hb) * m
                       + sizeof(float) * pairs * 2 * inter
                       + (2 * sizeof(int16_t) * inter + 2 * sizeof(float) * ib) * pairs
                       + sizeof(float) * pairs * hidden;
    char *scratch = malloc(bytes);
    if (scratch == NULL) return 2;
    int64_t *chosen = (int64_t *)scratch;
    float *weight = (float *)(chosen + pairs), *probability = weight + pairs, *scores = probability + experts;
    float *xd = scores + m * experts, *xs = xd + m * hb, *h = xs + m * hb, *ad = h + pairs * 2 * inter;
    float *as = ad + pairs * ib, *y = as + pairs * ib;
    /* the int16 values, then the same split (q16_split_row) where Q6_K's GEMV reads it (left unused otherwise) */
    int16_t *xq = (int16_t *)(y + pairs * hidden), *aq = xq + m * hidden, *xsplit = aq + pairs * inter;
    int16_t *asplit = xsplit + m * hidden;
    if (router != NULL) { /* the router's product: experts x hidden a token, a few hundred thousand FMAs */
#pragma omp parallel for schedule(static) num_threads(threads)
        for (int64_t at = 0; at < m * experts; ++at) {
            const float *row = router + at % experts * hidden, *v = x + at / experts * hidden;
            float sum = 0.0f;
            for (int64_t j = 0; j < hidden; ++j) sum += row[j] * v[j];
            scores[at] = sum;
        }
        logits = scores;
    }
    for (int64_t t = 0; t < m; ++t) {
        const float *l = logits + t * experts;
        float top = l[0], total = 0.0f;
        for (int64_t e = 1; e < experts; ++e) top = l[e] > top ? l[e] : top;
        for (int64_t e = 0; e < experts; ++e) total += probability[e] = expf(l[e] - top);
        for (int64_t e = 0; e < experts; ++e) probability[e] /= total;
        top_k(probability, experts, k, chosen + t * k, weight + t * k);
        if (renormalize) {
            float sum = 0.0f;
            for (int64_t c = 0; c < k; ++c) sum += weight[t * k + c];
            for (int64_t c = 0; c < k; ++c) weight[t * k + c] /= sum;
        }
        for (int64_t c = 0; c < k; ++c)
            if (chosen[t * k + c] < 0) { free(scratch); return 1; }
        q16_quantize_row(x + t * hidden, hidden, xq + t * hidden, xd + t * hb, xs + t * hb);
        if (Q16_SPLIT_Q6K && gate_up_type == GGUF_Q6_K) q16_split_row(xq + t * hidden, hidden, xsplit + t * hidden);
    }
    const int64_t gu_groups = 2 * inter / GGUF_COLS, down_groups = hidden / GGUF_COLS;
#pragma omp parallel num_threads(threads)
    {
#pragma omp for schedule(static)
        for (int64_t at = 0; at < pairs * gu_groups; ++at) {
            const int64_t p = at / gu_groups, g = at % gu_groups, t = p / k;
            const q16_rows row = {xq + t * hidden, xd + t * hb, xs + t * hb, hidden,
                                  Q16_SPLIT_Q6K && gate_up_type == GGUF_Q6_K ? xsplit + t * hidden : NULL};
            gguf_dot_group(&row, (const uint8_t *)(intptr_t)gate_up[chosen[p]], gate_up_type, gu_row_bytes,
                           gate_up_il, g, h + p * 2 * inter + g * GGUF_COLS);
        }
#pragma omp for schedule(static)
        for (int64_t p = 0; p < pairs; ++p) {
            float *gate = h + p * 2 * inter; /* SiLU(gate) * up, in place over the gate half */
            for (int64_t j = 0; j < inter; ++j) gate[j] = gate[j] / (1.0f + expf(-gate[j])) * gate[inter + j];
            q16_quantize_row(gate, inter, aq + p * inter, ad + p * ib, as + p * ib);
            if (Q16_SPLIT_Q6K && down_type == GGUF_Q6_K) q16_split_row(aq + p * inter, inter, asplit + p * inter);
        }
#pragma omp for schedule(static)
        for (int64_t at = 0; at < pairs * down_groups; ++at) {
            const int64_t p = at / down_groups, g = at % down_groups;
            const q16_rows row = {aq + p * inter, ad + p * ib, as + p * ib, inter,
                                  Q16_SPLIT_Q6K && down_type == GGUF_Q6_K ? asplit + p * inter : NULL};
            gguf_dot_group(&row, (const uint8_t *)(intptr_t)down[chosen[p]], down_type, down_row_bytes, down_il, g,
                           y + p * hidden + g * GGUF_COLS);
        }
#pragma omp for schedule(static)
        for (int64_t t = 0; t < m; ++t) {
            float logit = 0.0f;
            if (shared != NULL && shared_gate_weight != NULL)
                for (int64_t j = 0; j < hidden; ++j) logit += shared_gate_weight[j] * x[t * hidden + j];
            else if (shared != NULL)
                logit = shared_gate_logits[t];
            const float gate = 1.0f / (1.0f + expf(-logit));
            for (int64_t j = 0; j < hidden; ++j) {
                float sum = 0.0f;
                for (int64_t c = 0; c < k; ++c) sum += weight[t * k + c] * y[(t * k + c) * hidden + j];
                out[t * hidden + j] = shared != NULL ? sum + gate * shared[t * hidden + j] : sum;
            }
        }
    }
    free(scratch);
    return 0;
}
