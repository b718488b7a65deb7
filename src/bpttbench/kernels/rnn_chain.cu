// rnn_chain.cu -- fused adjoint (BPTT) chain for the vanilla RNN, J_t = diag(phi'(a_t)) W_hh.
//
// One adjoint step on a frame Q [H, k] of one batch element is
//     M = J_t^T Q = W_hh^T (phi'(a_t) (.) Q)
// followed by column rescaling (log of the norms into float64 accumulators) or, every
// qr_every lags and at the last lag, by a twice-applied modified Gram-Schmidt QR whose
// log|diag R| is added to the float64 totals (same algorithm as chain.run_chain).
//
// Memory layout (row-major, contiguous, as torch/numpy give them):
//   deriv  [T, B, H]   phi'(a_t), time index i holds J_{i+1}     (float or double)
//   w_hh   [H, H]      torch weight_hh_l0 (row r = output unit r)  (same dtype)
//   frame  [B, H, k]   the frame, element (b, r, j) at (b*H + r)*k + j   (in/out)
//   scale  [B, k]      float64 log column scales since the last QR      (in/out)
//   total  [B, k]      float64 accumulated log stretching up to the last QR (in/out)
//   rows   [n, B, k]   float64 per step: total + scale (= total right after a QR)
//
// Kernels (each in a float32 "_f32" and a float64 "_f64" flavour):
//   rnn_chain_persistent: grid = (B), block = (NTHREADS = 256, launch.cuh), dynamic shared memory
//       3*k*8 + 32*8 + (2*H*k + H)*sizeof(T) bytes. Runs n_steps steps (J indices
//       t_first, t_first-1, ...) without leaving the kernel; the frame lives in shared
//       memory. Limits: H <= 128 and the shared memory above within the device's opt-in
//       maximum (e.g. H = 128, k = 64 in float32: 67 KB); the wrapper checks both.
//   rnn_adjoint_step_tiled: one step for every batch element, for any H:
//       grid = (ceil(k/16), ceil(H/16), B), block = (16, 16), 2 * 16*17*sizeof(T) static
//       shared memory; writes M [B, H, k]. deriv_t points at deriv[i] ([B, H]). gridDim.z is
//       at most 65,535: the wrapper launches larger batches in slices of <= 65,535 elements.
//   colnorm_rescale: grid = (B), block = (NTHREADS = 256, launch.cuh); rescales the columns of M [B, D, k] to
//       unit norm in place, scale += log(norm) (float64), row_out [B, k] = total + scale.
//   Zero columns stay zero and give log = -inf (an exactly vanished direction).
// All accumulations of squares, dot products and logs are in float64. No atomics: the
// results are deterministic for a given launch shape.

#include "launch.cuh"
#include "block_reduce.cuh"

template <typename T>
__device__ void rnn_chain_persistent_impl(const T* __restrict__ deriv, const T* __restrict__ w_hh,
                                          T* __restrict__ frame, double* __restrict__ scale,
                                          double* __restrict__ total, double* __restrict__ rows,
                                          int B, int H, int k, int t_first, int n_steps, int lag0,
                                          int qr_every, int T_total) {
    extern __shared__ double smem[];
    double* s = smem;            // [k] log scales since the last QR
    double* tot = s + k;         // [k] totals
    double* inv = tot + k;       // [k] 1 / column norm
    double* red = inv + k;       // [32] reduction scratch
    T* q = reinterpret_cast<T*>(red + 32);  // [H*k] frame
    T* m = q + H * k;                        // [H*k] J^T frame
    T* d = m + H * k;                        // [H] phi'(a_t)
    const int b = blockIdx.x;
    const int tid = threadIdx.x, nthr = blockDim.x;
    const int lane = tid & 31, warp = tid >> 5, nwarps = nthr >> 5;
    const int hk = H * k;

    for (int o = tid; o < hk; o += nthr) q[o] = frame[(size_t)b * hk + o];
    for (int j = tid; j < k; j += nthr) {
        s[j] = scale[b * k + j];
        tot[j] = total[b * k + j];
    }
    __syncthreads();

    for (int step = 0; step < n_steps; ++step) {
        const int i = t_first - step;  // J_{i+1}: deriv row i
        const int lag = lag0 + step + 1;
        for (int l = tid; l < H; l += nthr) d[l] = deriv[((size_t)i * B + b) * H + l];
        __syncthreads();
        // M = W^T (d (.) Q): out (r, j) = sum_l W[l, r] d[l] Q[l, j]; threads of a warp share
        // r (broadcast W) and read consecutive j (conflict-free shared memory)
        for (int o = tid; o < hk; o += nthr) {
            const int r = o / k, j = o - (o / k) * k;
            T acc = (T)0;
            for (int l = 0; l < H; ++l) acc += (w_hh[l * H + r] * d[l]) * q[l * k + j];
            m[o] = acc;
        }
        __syncthreads();
        const bool is_qr = (lag % qr_every == 0) || (lag == T_total);
        if (!is_qr) {
            for (int j = warp; j < k; j += nwarps) {
                double ss = 0.0;
                for (int r = lane; r < H; r += 32) {
                    const double v = (double)m[r * k + j];
                    ss += v * v;
                }
                ss = warp_sum(ss);
                if (lane == 0) {
                    const double nrm = sqrt(ss);
                    s[j] += log(nrm);
                    inv[j] = nrm > 0.0 ? 1.0 / nrm : 0.0;
                }
            }
            __syncthreads();
            for (int o = tid; o < hk; o += nthr) q[o] = m[o] * (T)inv[o - (o / k) * k];
            for (int j = tid; j < k; j += nthr) rows[((size_t)step * B + b) * k + j] = tot[j] + s[j];
        } else {
            T* tmp = q;  // the new frame is m: swap the buffers (every thread does the same)
            q = m;
            m = tmp;
            block_mgs2<T>(q, H, k, tot, red);
            __syncthreads();
            for (int j = tid; j < k; j += nthr) {
                tot[j] += s[j];
                s[j] = 0.0;
                rows[((size_t)step * B + b) * k + j] = tot[j];
            }
        }
        __syncthreads();
    }
    for (int o = tid; o < hk; o += nthr) frame[(size_t)b * hk + o] = q[o];
    for (int j = tid; j < k; j += nthr) {
        scale[b * k + j] = s[j];
        total[b * k + j] = tot[j];
    }
}

template <typename T>
__device__ void rnn_adjoint_step_tiled_impl(const T* __restrict__ deriv_t, const T* __restrict__ w_hh,
                                            const T* __restrict__ frame, T* __restrict__ out, int B,
                                            int H, int k) {
    __shared__ T ws[TILE][TILE + 1];  // ws[l][r'] = W[l0 + l, r0 + r']
    __shared__ T qs[TILE][TILE + 1];  // qs[l][j'] = d[l0 + l] * Q[l0 + l, j0 + j']
    const int b = blockIdx.z;
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int j0 = blockIdx.x * TILE, r0 = blockIdx.y * TILE;
    const int j = j0 + tx, r = r0 + ty;
    const T* q = frame + (size_t)b * H * k;
    const T* d = deriv_t + (size_t)b * H;
    T acc = (T)0;
    for (int l0 = 0; l0 < H; l0 += TILE) {
        const int l = l0 + ty;
        ws[ty][tx] = (l < H && r0 + tx < H) ? w_hh[(size_t)l * H + r0 + tx] : (T)0;
        qs[ty][tx] = (l < H && j < k) ? d[l] * q[(size_t)l * k + j] : (T)0;
        __syncthreads();
#pragma unroll
        for (int ll = 0; ll < TILE; ++ll) acc += ws[ll][ty] * qs[ll][tx];
        __syncthreads();
    }
    if (r < H && j < k) out[((size_t)b * H + r) * k + j] = acc;
}

template <typename T>
__device__ void colnorm_rescale_impl(T* __restrict__ mat, double* __restrict__ scale,
                                     const double* __restrict__ total, double* __restrict__ row_out,
                                     int B, int D, int k) {
    const int b = blockIdx.x;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    T* a = mat + (size_t)b * D * k;
    for (int j = warp; j < k; j += nwarps) {
        double ss = 0.0;
        for (int r = lane; r < D; r += 32) {
            const double v = (double)a[(size_t)r * k + j];
            ss += v * v;
        }
        ss = warp_sum(ss);
        const double nrm = sqrt(ss);
        const T iv = nrm > 0.0 ? (T)(1.0 / nrm) : (T)0;
        for (int r = lane; r < D; r += 32) a[(size_t)r * k + j] *= iv;
        if (lane == 0) {
            const double sj = scale[b * k + j] + log(nrm);
            scale[b * k + j] = sj;
            row_out[b * k + j] = total[b * k + j] + sj;
        }
    }
}

#define RNN_CHAIN_KERNELS(T, SUFFIX)                                                                 \
    extern "C" __global__ void __launch_bounds__(NTHREADS)                                          \
        rnn_chain_persistent_##SUFFIX(const T* deriv, const T* w_hh, T* frame, double* scale,       \
                                      double* total, double* rows, int B, int H, int k,             \
                                      int t_first, int n_steps, int lag0, int qr_every,             \
                                      int T_total) {                                                \
        rnn_chain_persistent_impl<T>(deriv, w_hh, frame, scale, total, rows, B, H, k, t_first,      \
                                     n_steps, lag0, qr_every, T_total);                             \
    }                                                                                               \
    extern "C" __global__ void rnn_adjoint_step_tiled_##SUFFIX(const T* deriv_t, const T* w_hh,    \
                                                               const T* frame, T* out, int B,      \
                                                               int H, int k) {                     \
        rnn_adjoint_step_tiled_impl<T>(deriv_t, w_hh, frame, out, B, H, k);                         \
    }                                                                                               \
    extern "C" __global__ void __launch_bounds__(NTHREADS)                                          \
        colnorm_rescale_##SUFFIX(T* mat, double* scale, const double* total, double* row_out,       \
                                 int B, int D, int k) {                                             \
        colnorm_rescale_impl<T>(mat, scale, total, row_out, B, D, k);                               \
    }

FOR_FLOAT_TYPES(RNN_CHAIN_KERNELS)
