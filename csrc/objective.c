/* objective.c: group-normalised advantages (the per-row objective is in objective_real.c). */
#include "objective.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int64_t key, row;
} rsm_key_row;

static int
rsm_key_row_cmp(const void *a, const void *b)
{
    const rsm_key_row *x = (const rsm_key_row *)a, *y = (const rsm_key_row *)b;
    if (x->key != y->key) return x->key < y->key ? -1 : 1;
    return x->row < y->row ? -1 : (x->row > y->row);
}

rsm_status
rsm_group_advantages(int64_t rows, const double *rewards, const int64_t *keys, double eps,
                     double adv_clip, int center_only, double *advantages, uint8_t *mask)
{
    RSM_CHECK(rows >= 0, RSM_ERR_VALUE, "rows=%lld must be >= 0", (long long)rows);
    for (int64_t r = 0; r < rows; r++)
        RSM_CHECK(isfinite(rewards[r]), RSM_ERR_NUMERIC, "rewards[%lld]=%g is not finite",
                  (long long)r, rewards[r]);
    rsm_key_row *order = (rsm_key_row *)malloc((size_t)(rows > 0 ? rows : 1) * sizeof(rsm_key_row));
    RSM_CHECK(order != NULL, RSM_ERR_MEMORY, "out of memory");
    for (int64_t r = 0; r < rows; r++) {
        order[r].key = keys ? keys[r] : 0;
        order[r].row = r;
    }
    /* sorting by (key, row) makes every group's sums run in row order: deterministic */
    qsort(order, (size_t)rows, sizeof(rsm_key_row), rsm_key_row_cmp);
    for (int64_t begin = 0; begin < rows;) {
        int64_t end = begin;
        while (end < rows && order[end].key == order[begin].key) end++;
        double mean = 0.0, var = 0.0;
        for (int64_t i = begin; i < end; i++) mean += rewards[order[i].row];
        mean /= (double)(end - begin);
        for (int64_t i = begin; i < end; i++) {
            double d = rewards[order[i].row] - mean;
            var += d * d;
        }
        double std = sqrt(var / (double)(end - begin)); /* population std */
        for (int64_t i = begin; i < end; i++) {
            int64_t r = order[i].row;
            double a = rewards[r] - mean;
            if (!center_only) a = std > 0 ? a / (std + eps) : 0.0;
            if (adv_clip > 0) a = fmin(fmax(a, -adv_clip), adv_clip);
            advantages[r] = a;
            if (mask) mask[r] = (uint8_t)(std > 0);
        }
        begin = end;
    }
    free(order);
    return RSM_OK;
}
