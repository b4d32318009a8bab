/* objective.cu: the RSM objective and its cotangent on the device, fused (csrc/objective.h,
 * objective_real.c): one warp per row computes the row's sums, its loss and every element of its
 * cotangent in one pass over u (two for the ratio forms, whose cotangent needs log rho first).
 * The per-element and per-row bodies are csrc/ops/objective_elem.h's, in double as on the CPU.
 * Per-row results come back to the caller, which sums them in row order as the CPU does. */
#include "common.cuh"

#include "ops/objective_elem.h"

namespace {

using rsm_cuda::kRowsPerBlock;
using rsm_cuda::kWarp;
using rsm_cuda::warp_sum;

template <typename real>
__global__ void
objective_kernel(int form, int anchor_old, int linear_only, double dims, double normalizer,
                 int64_t rows, int64_t dim, const rsm_objective_row *coef, const real *u,
                 const real *u_old, const real *u_ref, const real *psi, const real *noise,
                 real *cotangent, double *row_loss_out, double *kl_out, double *log_ratio,
                 uint8_t *active_out)
{
    const int lane = threadIdx.x % kWarp;
    const int64_t warps = (int64_t)gridDim.x * kRowsPerBlock;
    const int sm = form == RSM_FORM_SCORE_MATCHING;
    for (int64_t r = blockIdx.x * (int64_t)kRowsPerBlock + threadIdx.x / kWarp; r < rows;
         r += warps) {
        const rsm_objective_row c = coef[r];
        const real *ur = u + r * dim;
        real *g = cotangent + r * dim;
        if (c.weight == 0.0) {
            for (int64_t d = lane; d < dim; d += kWarp) g[d] = 0;
            if (lane == 0) {
                row_loss_out[r] = 0.0;
                kl_out[r] = 0.0;
                if (log_ratio) log_ratio[r] = 0.0;
                active_out[r] = 0;
            }
            continue;
        }
        const double scale = c.weight / normalizer;
        double row_loss = 0.0, lr = 0.0;
        int row_active = 1;
        if (sm) {
            const real *anchor = (anchor_old ? u_old : u_ref) + r * dim;
            const double k = c.c1 * c.space * c.space / dims;
            double sq = 0.0, sq_old = 0.0;
            for (int64_t d = lane; d < dim; d += kWarp) {
                double e = rsm_sm_error((double)ur[d], (double)anchor[d], c.conv,
                                        psi ? c.gamma * (double)psi[r * dim + d] : 0.0);
                double o = (c.c2 != 0.0 && u_old)
                               ? rsm_sm_old_residual((double)ur[d], (double)u_old[r * dim + d], c.conv)
                               : 0.0;
                sq += e * e;
                sq_old += o * o;
                g[d] = (real)rsm_sm_cotangent(scale, k, e, c.c2, o, c.conv);
            }
            sq = warp_sum(sq);
            sq_old = warp_sum(sq_old);
            row_loss = k * (sq + c.c2 * sq_old);
        } else {
            const real *uo = u_old + r * dim, *z = noise + r * dim;
            double lin = 0.0, quad = 0.0;
            for (int64_t d = lane; d < dim; d += kWarp) {
                double du = (double)ur[d] - (double)uo[d];
                lin += (double)z[d] * du;
                quad += du * du;
            }
            lin = warp_sum(lin);
            quad = warp_sum(quad);
            lr = rsm_ratio_log_rho(c.w, lin, quad, dims, linear_only);
            double dl_dlogrho;
            int ok;
            row_loss = rsm_ratio_row(form, &c, lr, &dl_dlogrho, &row_active, &ok);
            for (int64_t d = lane; d < dim; d += kWarp) {
                double du = (double)ur[d] - (double)uo[d];
                double dlogrho = rsm_ratio_dlogrho(c.w, (double)z[d], du, dims, linear_only);
                g[d] = (real)(scale * dl_dlogrho * dlogrho);
            }
        }
        double kl_row = 0.0;
        if (c.kl != 0.0) {
            const real *ref = u_ref + r * dim;
            double sq = 0.0;
            for (int64_t d = lane; d < dim; d += kWarp) {
                double diff = (double)ur[d] - (double)ref[d];
                sq += diff * diff;
                g[d] += (real)rsm_kl_cotangent(scale, &c, diff, dims);
            }
            sq = warp_sum(sq);
            kl_row = 0.5 * c.w_kl * c.w_kl * sq / dims;
            row_loss += c.kl * kl_row;
        }
        if (lane == 0) {
            row_loss_out[r] = scale * row_loss;
            kl_out[r] = c.weight * kl_row;
            if (log_ratio) log_ratio[r] = sm ? 0.0 : lr;
            active_out[r] = (uint8_t)row_active;
        }
    }
}

}  // namespace

using namespace rsm_cuda;

extern "C" int
rsm_cuda_objective(int dtype, int form, int anchor_old, int linear_only, int mean_over_dims,
                   double normalizer, int64_t rows, int64_t dim, const void *coef, const void *u,
                   const void *u_old, const void *u_ref, const void *psi, const void *noise,
                   void *cotangent, double *row_loss, double *kl_row, double *log_ratio,
                   uint8_t *active, void *stream)
{
    if (form < RSM_FORM_SCORE_MATCHING || form > RSM_FORM_MATCHING)
        return fail(1, "objective: unknown form %d", form);
    if (!(normalizer > 0)) return fail(1, "objective: normalizer=%g must be positive", normalizer);
    const int sm = form == RSM_FORM_SCORE_MATCHING;
    if (u == nullptr) return fail(1, "objective: u is required");
    if (sm && (anchor_old ? u_old : u_ref) == nullptr)
        return fail(1, "objective: score matching needs the anchor outputs (%s)",
                    anchor_old ? "u_old" : "u_ref");
    if (!sm && (u_old == nullptr || noise == nullptr))
        return fail(1, "objective: ratio forms need u_old and the step noise");
    if (rows <= 0) return 0;
    const double dims = mean_over_dims ? (double)dim : 1.0;
    RSM_DISPATCH_REAL(dtype, "objective", {
        objective_kernel<real><<<grid_for(rows, kRowsPerBlock), kThreads, 0, pick_stream(stream)>>>(
            form, anchor_old, linear_only, dims, normalizer, rows, dim,
            (const rsm_objective_row *)coef, (const real *)u, (const real *)u_old,
            (const real *)u_ref, (const real *)psi, (const real *)noise, (real *)cotangent,
            row_loss, kl_row, log_ratio, active);
    });
    return launched("objective");
}
