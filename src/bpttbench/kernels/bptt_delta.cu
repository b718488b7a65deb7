// bptt_delta.cu -- the vanilla RNN's two-column BPTT chain delta_t = J_{t+1}^T delta_{t+1}
// as one persistent kernel (bpttbench.gradient_flow.bptt_delta_cupy; the CuPy wrapper is
// bpttbench.jacobians.cupy_kernels.bptt_delta_rnn).
//
// For the vanilla RNNs J_t^T v = W_hh^T (phi'(a_t) * v) needs no Jacobian. One block per batch
// element carries both columns through n_steps steps without leaving the kernel: column 0
// in the working dtype, never rescaled (it overflows and underflows where real BPTT does),
// column 1 rescaled to unit norm every step (its norms give the log-scale rate). Per step
// and column: scale by phi', product with W_hh (the columns in shared memory), the float64
// norm (block tree reduction in a fixed order: deterministic), and for column 1 the rescale,
// in float64 then rounded to T.
//
// Memory layout (row-major, contiguous):
//   deriv     [T, B, H]   T  phi'(a_i), index i for J_{i+1}                       (in)
//   w_hh      [H, H]      T                                                        (in)
//   frame     [B, 2, H]   T  the two columns, carried in and out                  (in/out)
//   norm_raw  [n, B]      double  ||column 0|| after each of the n steps           (out)
//   scale     [n, B]      double  the norm column 1 was divided by at each step     (out)
//   zero0     [n, B]      double  1 where column 0's first entry is exactly 0       (out)
// Step s (0 <= s < n_steps) applies J_{t_first - s + 1}^T, i.e. reads deriv[t_first - s].
// Launch: grid = (B), block = (NTHREADS, launch.cuh), one block per batch element;
//   dynamic shared memory 2*NTHREADS*8 + 4*H*sizeof(T) bytes (the partial sums, the columns
//   and their phi'-scaled copies).
// Limits: the dynamic shared memory must fit the 48 KB available without opt-in: H <= 2816
//   in float32, 1408 in float64 (the caller falls back to torch beyond); blockDim.x must be
//   NTHREADS (the tree reduction is written for it); n_steps <= t_first + 1.

#include "launch.cuh"
#include "adjoint_product.cuh"

template <typename T>
__device__ void delta_rnn_impl(const T* __restrict__ deriv, const T* __restrict__ w_hh,
                               T* __restrict__ frame, double* __restrict__ norm_raw,
                               double* __restrict__ scale, double* __restrict__ zero0, int B,
                               int H, int t_first, int n_steps) {
    extern __shared__ double smem[];
    double* red = smem;                               // [2 * NTHREADS] partial sums
    T* v = reinterpret_cast<T*>(red + 2 * NTHREADS);  // [2H] the columns (raw, rescaled)
    T* vd = v + 2 * H;                                // [2H] phi' * v
    const int b = blockIdx.x, tid = threadIdx.x;
    for (int o = tid; o < 2 * H; o += NTHREADS) v[o] = frame[(size_t)b * 2 * H + o];
    __syncthreads();
    for (int s = 0; s < n_steps; ++s) {
        const T* d = deriv + ((size_t)(t_first - s) * B + b) * H;
        for (int j = tid; j < H; j += NTHREADS) {
            const T dj = d[j];
            vd[j] = dj * v[j];
            vd[H + j] = dj * v[H + j];
        }
        __syncthreads();
        double p0 = 0.0, p1 = 0.0;
        for (int r = tid; r < H; r += NTHREADS) {  // (W^T vd)_r = sum_j W[j][r] vd_j
            T m0, m1;
            wt_two_columns(w_hh, vd, H, H, r, m0, m1);
            v[r] = m0;
            v[H + r] = m1;
            p0 += (double)m0 * (double)m0;
            p1 += (double)m1 * (double)m1;
        }
        red[tid] = p0;
        red[NTHREADS + tid] = p1;
        __syncthreads();
        for (int w = NTHREADS / 2; w > 0; w >>= 1) {
            if (tid < w) {
                red[tid] += red[tid + w];
                red[NTHREADS + tid] += red[NTHREADS + tid + w];
            }
            __syncthreads();
        }
        const double n1 = sqrt(red[NTHREADS]);
        if (tid == 0) {
            norm_raw[(size_t)s * B + b] = sqrt(red[0]);
            scale[(size_t)s * B + b] = n1;
            zero0[(size_t)s * B + b] = v[0] == T(0) ? 1.0 : 0.0;
        }
        for (int r = tid; r < H; r += NTHREADS) v[H + r] = (T)((double)v[H + r] / n1);
        __syncthreads();  // the partial sums and the columns are reused by the next step
    }
    for (int o = tid; o < 2 * H; o += NTHREADS) frame[(size_t)b * 2 * H + o] = v[o];
}

#define BPTT_DELTA_KERNELS(T, SUFFIX)                                                        \
    extern "C" __global__ void __launch_bounds__(NTHREADS)                                   \
        bptt_delta_rnn_##SUFFIX(const T* deriv, const T* w_hh, T* frame, double* norm_raw,   \
                                double* scale, double* zero0, int B, int H, int t_first,     \
                                int n_steps) {                                               \
        delta_rnn_impl<T>(deriv, w_hh, frame, norm_raw, scale, zero0, B, H, t_first,         \
                          n_steps);                                                          \
    }

FOR_FLOAT_TYPES(BPTT_DELTA_KERNELS)
