// full_frame.cu -- one step of the full-frame pass's float64 update (bpttbench.jacobians.spectrum):
// the column-scaled product A_lag = R_lag A_{lag-1}, its unit columns and their logs, in one launch.
//
// Math, for every batch element b (A_{lag-1} = U diag(exp(c)), U with unit columns):
//     V          = triu(R) U                      (float64; R's strictly lower triangle is never
//                                                   read: it is the triangular mask of R = Q^T M)
//     n_j        = ||V[:, j]||_2                  (float64 sum of squares, then sqrt)
//     U_out[:, j] = V[:, j] * (n_j > 0 ? 1 / n_j : 0)   (a zero column stays zero)
//     c_out[j]   = c[j] + log(n_j)                (-inf for a zero column)
// so A_lag = U_out diag(exp(c_out)) exactly as spectrum._unit_columns(R A) gives it, up to the
// order of the float64 sums. R comes in the working dtype (float or double) and is widened
// exactly to double (the float64 cast of R is folded in); everything else is double.
//
// Memory layout (row-major, contiguous):
//   R      [B, D, D]  float or double, element (b, i, k) at (b*D + i)*D + k     (in)
//   U      [B, D, D]  double                                                    (in)
//   c      [B, D]     double, the column logs of A_{lag-1}                      (in)
//   U_out  [B, D, D]  double                                                    (out)
//   c_out  [B, D]     double                                                    (out)
// Launch: grid = (ceil(D / FULL_FRAME_COLS), B), block = (NTHREADS = 256, launch.cuh); each
//   block computes FULL_FRAME_COLS (= 8, launch.cuh) columns j0.. of one batch element. Warp w
//   takes the rows i = w, w + 8, ...; its lanes split the k >= i of row i (coalesced reads of
//   R's row), each against the block's columns of U staged in shared memory column by column
//   (consecutive lanes read consecutive k: no bank conflicts), and reduce by shuffles in a
//   fixed order. Dynamic shared memory: (D + NTHREADS/32 + 1) * FULL_FRAME_COLS
//   doubles (the U tile, the per-warp sums of squares, the reciprocal norms).
// Limits: any D with that shared memory within the device's opt-in maximum (D = 512, the
//   LSTM's 2H at H = 256: 33 KB; the wrapper cupy_kernels.full_frame_update opts in above 48 KB
//   and refuses beyond). Column norms must lie in float64's squaring range (about 1e-154 to
//   1e154), as in the NumPy formula: outside it the square sum under/overflows the same way.
//   NaN/inf propagate. Deterministic (no atomics); U and U_out, c and c_out must not overlap.

#include "launch.cuh"
#include "block_reduce.cuh"

template <typename T>
__device__ void full_frame_update_impl(const T* __restrict__ R, const double* __restrict__ U,
                                       const double* __restrict__ c, double* __restrict__ U_out,
                                       double* __restrict__ c_out, int B, int D) {
    extern __shared__ double smem[];
    const int C = FULL_FRAME_COLS;
    const int nwarps = NTHREADS / 32;
    double* tile = smem;                 // [C][D] the block's columns of U (0 past column D)
    double* ssw = tile + (size_t)D * C;  // [nwarps][C] per-warp sums of squares
    double* inv = ssw + nwarps * C;      // [C] 1 / n_j (0 for a zero column)
    const int b = blockIdx.y, j0 = blockIdx.x * C;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (b >= B || j0 >= D) return;  // whole block: no barrier is skipped by part of it
    const int nc = D - j0 < C ? D - j0 : C;  // columns of this block
    const T* r = R + (size_t)b * D * D;
    const double* u = U + (size_t)b * D * D;
    double* v = U_out + (size_t)b * D * D;

    for (int o = threadIdx.x; o < D * C; o += blockDim.x) {
        const int k = o / C, jj = o - k * C;
        tile[(size_t)jj * D + k] = jj < nc ? u[(size_t)k * D + j0 + jj] : 0.0;
    }
    __syncthreads();

    double ss[FULL_FRAME_COLS];
    for (int jj = 0; jj < C; ++jj) ss[jj] = 0.0;
    for (int i = warp; i < D; i += nwarps) {
        double acc[FULL_FRAME_COLS];
        for (int jj = 0; jj < C; ++jj) acc[jj] = 0.0;
        for (int k = i + lane; k < D; k += 32) {  // upper triangle of row i only
            const double rik = (double)r[(size_t)i * D + k];
            for (int jj = 0; jj < C; ++jj) acc[jj] += rik * tile[(size_t)jj * D + k];
        }
        for (int jj = 0; jj < C; ++jj) {
            const double vij = warp_sum(acc[jj]);  // every lane holds the row's value
            ss[jj] += vij * vij;
            if (lane == jj && jj < nc) v[(size_t)i * D + j0 + jj] = vij;
        }
    }
    if (lane == 0)
        for (int jj = 0; jj < C; ++jj) ssw[warp * C + jj] = ss[jj];
    __syncthreads();
    if (threadIdx.x < nc) {
        const int jj = threadIdx.x;
        double tot = 0.0;
        for (int w = 0; w < nwarps; ++w) tot += ssw[w * C + jj];
        const double nrm = sqrt(tot);
        inv[jj] = nrm > 0.0 ? 1.0 / nrm : 0.0;
        c_out[(size_t)b * D + j0 + jj] = c[(size_t)b * D + j0 + jj] + log(nrm);
    }
    __syncthreads();
    // each value is rescaled by the lane that wrote it (same warp: its own writes are visible)
    for (int i = warp; i < D; i += nwarps)
        if (lane < nc) v[(size_t)i * D + j0 + lane] *= inv[lane];
}

#define FULL_FRAME_KERNELS(T, SUFFIX)                                                         \
    extern "C" __global__ void __launch_bounds__(NTHREADS)                                    \
        full_frame_update_##SUFFIX(const T* R, const double* U, const double* c,              \
                                   double* U_out, double* c_out, int B, int D) {              \
        full_frame_update_impl<T>(R, U, c, U_out, c_out, B, D);                               \
    }

FOR_FLOAT_TYPES(FULL_FRAME_KERNELS)
