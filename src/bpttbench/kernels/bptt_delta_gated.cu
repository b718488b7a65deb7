// bptt_delta_gated.cu -- the LSTM's and GRU's two-column BPTT chain delta_t = J_{t+1}^T delta_{t+1}
// as one persistent kernel per chunk of steps (bpttbench.gradient_flow.bptt_delta_cupy; the
// CuPy wrappers are bpttbench.jacobians.cupy_kernels.bptt_delta_lstm / bptt_delta_gru).
//
// The math is bptt_deltas.gated_adjoint_step with the per-step coefficients of
// bptt_deltas.adjoint_coefficients (computed by torch, for the steps of a launch):
//   LSTM, column [vh; vc] (D = 2H): wv = vc + oc*vh; g = k * [wv, wv, wv, vh] (4H);
//        vh' = W_hh^T g, vc' = f * wv.
//   GRU,  column v (D = H): g = k * [v, v, v] (3H); v' = W_hh^T g + z * v.
// One block per batch element carries both columns (column 0 in the working dtype, never
// rescaled; column 1 rescaled every step) through n_steps steps without leaving the kernel.
// Per step: the coefficient products (into shared memory), the product with W_hh (read from
// global memory, coalesced over the output index), the float64 norms (tree reduction in a
// fixed order: deterministic), the rescale of column 1 (float64, then rounded to T), and
// the per-lag rows bptt_deltas._run reduces on the torch path:
//   rows[s, 0, b] ||column 0, h part||          rows[s, 1, b] ||column 1|| (all D) before
//   rows[s, 2, b] ||column 1, h part|| after    rows[s, 3, b] 1 if column 0's entry 0 is 0
//   LSTM only: rows[s, 4, b] / rows[s, 5, b] ||vc + oc_row * vh|| of column 0 / 1 (after the
//   rescale): autograd's dL/dc_t, oc_row = oc[t - 1] for the row's t = t_first - s, 0 at t = 0.
//
// Memory layout (row-major, contiguous), G = 4H (LSTM) or 3H (GRU), K = 6 (LSTM) or 4 (GRU):
//   k      [T, B, G]   T  the gate coefficients of J_{i+1} at index i                  (in)
//   a      [T, B, H]   T  LSTM: oc = o (1 - tanh^2 c_t); GRU: z                        (in)
//   f      [T, B, H]   T  LSTM only: the forget gate                                   (in)
//   w_hh   [G, H]      T                                                               (in)
//   frame  [B, 2, D]   T  the two columns, carried in and out                         (in/out)
//   rows   [n, K, B]   double  per step s, see above                                   (out)
// Step s (0 <= s < n_steps) applies J_{t_first - s + 1}^T, i.e. reads index t_first - s.
// Launch: grid = (B), block = (NTHREADS, launch.cuh); dynamic shared memory
//   3*NTHREADS*8 + (2*D + 2*G)*sizeof(T) bytes (the partial sums, the columns, the products).
// Limits: that must fit the 48 KB available without opt-in: LSTM H <= 896 in float32, 448 in
//   float64; GRU H <= 1344 in float32, 672 in float64 (the caller falls back to torch beyond);
//   blockDim.x must be NTHREADS (the tree reduction is written for it); n_steps <= t_first + 1.

#include "launch.cuh"
#include "adjoint_product.cuh"

// Sum of the NR arrays red[q * NTHREADS + tid] over the block, left in red[q * NTHREADS].
template <int NR>
__device__ void tree_sum(double* red, int tid) {
    __syncthreads();
    for (int w = NTHREADS / 2; w > 0; w >>= 1) {
        if (tid < w)
            for (int q = 0; q < NR; ++q) red[q * NTHREADS + tid] += red[q * NTHREADS + tid + w];
        __syncthreads();
    }
}

template <typename T, bool LSTM>
__device__ void delta_gated_impl(const T* __restrict__ k, const T* __restrict__ a,
                                 const T* __restrict__ f, const T* __restrict__ w_hh,
                                 T* __restrict__ frame, double* __restrict__ rows, int B, int H,
                                 int t_first, int n_steps) {
    constexpr int NG = LSTM ? 4 : 3, NK = LSTM ? 6 : 4;
    const int D = LSTM ? 2 * H : H, G = NG * H;
    extern __shared__ double smem[];
    double* red = smem;                               // [3 * NTHREADS] partial sums
    T* v = reinterpret_cast<T*>(red + 3 * NTHREADS);  // [2D] the columns (raw, rescaled)
    T* g = v + 2 * D;                                 // [2G] the coefficient products
    const int b = blockIdx.x, tid = threadIdx.x;
    for (int o = tid; o < 2 * D; o += NTHREADS) v[o] = frame[(size_t)b * 2 * D + o];
    __syncthreads();
    for (int s = 0; s < n_steps; ++s) {
        const int i = t_first - s;
        const T* ki = k + ((size_t)i * B + b) * G;
        const T* ai = a + ((size_t)i * B + b) * H;
        for (int j = tid; j < H; j += NTHREADS) {
            for (int c = 0; c < 2; ++c) {
                T* vc = v + c * D;
                T* gc = g + c * G;
                const T vh = vc[j];
                if (LSTM) {
                    const T wv = vc[H + j] + ai[j] * vh;  // dL/dc_t along both paths
                    gc[j] = wv * ki[j];
                    gc[H + j] = wv * ki[H + j];
                    gc[2 * H + j] = wv * ki[2 * H + j];
                    gc[3 * H + j] = vh * ki[3 * H + j];
                    vc[H + j] = f[((size_t)i * B + b) * H + j] * wv;  // read by this thread only
                } else {
                    gc[j] = vh * ki[j];
                    gc[H + j] = vh * ki[H + j];
                    gc[2 * H + j] = vh * ki[2 * H + j];
                }
            }
        }
        __syncthreads();
        double p0 = 0.0, p1 = 0.0;
        for (int r = tid; r < H; r += NTHREADS) {  // (W^T g)_r = sum_j W[j][r] g_j
            T m0, m1;
            wt_two_columns(w_hh, g, G, H, r, m0, m1);
            if (!LSTM) {  // + z * v, after the product (torch's addcmul_)
                m0 = m0 + ai[r] * v[r];
                m1 = m1 + ai[r] * v[D + r];
            }
            v[r] = m0;
            v[D + r] = m1;
            p0 += (double)m0 * (double)m0;
            p1 += (double)m1 * (double)m1;
        }
        double pc = 0.0;  // column 1's c part (LSTM), and column 0's dL/dc
        double q0 = 0.0;
        const T* oc_row = (LSTM && i > 0) ? a + ((size_t)(i - 1) * B + b) * H : nullptr;
        __syncthreads();  // the new h parts are complete
        if (LSTM) {
            for (int j = tid; j < H; j += NTHREADS) {
                const double x1 = (double)v[D + H + j];
                pc += x1 * x1;
                const T oc = oc_row ? oc_row[j] : T(0);
                const double y0 = (double)(T)(v[H + j] + oc * v[j]);
                q0 += y0 * y0;
            }
        }
        red[tid] = p0;
        red[NTHREADS + tid] = p1 + pc;
        red[2 * NTHREADS + tid] = q0;
        tree_sum<3>(red, tid);
        const double n1 = sqrt(red[NTHREADS]);
        double* row = rows + (size_t)s * NK * B + b;
        if (tid == 0) {
            row[0] = sqrt(red[0]);
            row[B] = n1;
            row[3 * B] = v[0] == T(0) ? 1.0 : 0.0;
            if (LSTM) row[4 * B] = sqrt(red[2 * NTHREADS]);
        }
        __syncthreads();  // thread 0 has read the sums before they are overwritten
        double u = 0.0, q1 = 0.0;
        for (int r = tid; r < H; r += NTHREADS) {
            const T x = (T)((double)v[D + r] / n1);
            v[D + r] = x;
            u += (double)x * (double)x;
        }
        if (LSTM) {
            for (int j = tid; j < H; j += NTHREADS) v[D + H + j] = (T)((double)v[D + H + j] / n1);
            __syncthreads();  // dL/dc of column 1 reads its rescaled h part
            for (int j = tid; j < H; j += NTHREADS) {
                const T oc = oc_row ? oc_row[j] : T(0);
                const double y1 = (double)(T)(v[D + H + j] + oc * v[D + j]);
                q1 += y1 * y1;
            }
        }
        red[tid] = u;
        red[NTHREADS + tid] = q1;
        tree_sum<2>(red, tid);
        if (tid == 0) {
            row[2 * B] = sqrt(red[0]);
            if (LSTM) row[5 * B] = sqrt(red[NTHREADS]);
        }
        __syncthreads();  // the partial sums and the columns are reused by the next step
    }
    for (int o = tid; o < 2 * D; o += NTHREADS) frame[(size_t)b * 2 * D + o] = v[o];
}

#define BPTT_DELTA_GATED_KERNELS(T, SUFFIX)                                                  \
    extern "C" __global__ void __launch_bounds__(NTHREADS)                                   \
        bptt_delta_lstm_##SUFFIX(const T* k, const T* oc, const T* f, const T* w_hh,         \
                                 T* frame, double* rows, int B, int H, int t_first,          \
                                 int n_steps) {                                              \
        delta_gated_impl<T, true>(k, oc, f, w_hh, frame, rows, B, H, t_first, n_steps);      \
    }                                                                                        \
    extern "C" __global__ void __launch_bounds__(NTHREADS)                                   \
        bptt_delta_gru_##SUFFIX(const T* k, const T* z, const T* w_hh, T* frame,             \
                                double* rows, int B, int H, int t_first, int n_steps) {      \
        delta_gated_impl<T, false>(k, z, nullptr, w_hh, frame, rows, B, H, t_first,          \
                                   n_steps);                                                 \
    }

FOR_FLOAT_TYPES(BPTT_DELTA_GATED_KERNELS)
