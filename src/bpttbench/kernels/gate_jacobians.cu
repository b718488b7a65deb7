// gate_jacobians.cu -- batched construction of the LSTM (2H x 2H) and GRU (H x H) step
// Jacobians J = ds_t/ds_{t-1} from saved gates, in PyTorch's conventions (LSTM gates i,f,g,o;
// GRU gates r,z,n; LSTM state ordered [h; c]). Formulas (h, c the previous state, c' the new
// cell state, W_* the H x H row blocks of weight_hh_l0, primes the activation derivatives
// computed from the pre-activations and saved by the forward pass):
//   LSTM: dc'/dc = diag(f)
//         dc'/dh = diag(c f') W_hf + diag(g i') W_hi + diag(i g') W_hg
//         dh'/dc = diag(o (1 - tanh^2 c') f)
//         dh'/dh = diag(tanh(c') o') W_ho + diag(o (1 - tanh^2 c')) dc'/dh
//   GRU:  J = diag(z) + diag((h - n) z') W_hz
//             + diag((1 - z) n') [diag(r) W_hn + diag((W_hn h + b_hn) r') W_hr]
//
// Memory layout (row-major, contiguous; N = number of (step, batch) pairs, e.g. T_chunk * B):
//   LSTM: gates, dgates [N, 4H] (i, f, g, o and i', f', g', o'); c_prev, tanh_c, dtanh_c [N, H]
//         (c_{t-1}, tanh c_t, 1 - tanh^2 c_t); w_hh [4H, H]; J out [N, 2H, 2H]
//   GRU:  gates, dgates [N, 3H] (r, z, n and r', z', n'); h_prev, hn, omz [N, H]
//         (h_{t-1}, W_hn h_{t-1} + b_hn, 1 - z); w_hh [3H, H]; J out [N, H, H]
// Launch: 1-D grid-stride loop over the N*D*D output elements, one thread per element;
//   block = (NTHREADS), grid = (min(ceil(N*D*D / NTHREADS), GRID_STRIDE_BLOCKS_MAX)) (launch.cuh).
//   64-bit indices, so any N*D*D.
//   Writes are coalesced (consecutive threads -> consecutive columns of one row); the per-row
//   gate factors are re-read by every thread of the row (cached in L1).
// Limits: none beyond memory (the wrapper builds time chunks of at most ~64 MB of J).
// float32 ("_f32") and float64 ("_f64") flavours; pure elementwise math, deterministic.

#include "launch.cuh"

// The grid-stride loop over the N*D*D entries of a batch of D x D Jacobians: body(e, n, row,
// col) for entry e = (n*D + row)*D + col (64-bit, so any N*D*D).
template <typename F>
__device__ __forceinline__ void for_each_entry(long long N, long long D, F body) {
    const long long total = N * D * D;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x)
        body(e, e / (D * D), (int)((e / D) % D), (int)(e % D));
}

template <typename T>
__device__ void lstm_jacobians_impl(const T* __restrict__ gates, const T* __restrict__ dgates,
                                    const T* __restrict__ c_prev, const T* __restrict__ tanh_c,
                                    const T* __restrict__ dtanh_c, const T* __restrict__ w_hh,
                                    T* __restrict__ J, long long N, int H) {
    const size_t HH = (size_t)H * H;
    for_each_entry(N, 2LL * H, [&](long long e, long long n, int row, int col) {
        const int u = row < H ? row : row - H;  // unit of the row
        const T* gn = gates + (size_t)n * 4 * H;
        const T* dn = dgates + (size_t)n * 4 * H;
        const T i = gn[u], f = gn[H + u], g = gn[2 * H + u];
        const T o = gn[3 * H + u];
        const T di = dn[u], df = dn[H + u], dg = dn[2 * H + u], dout = dn[3 * H + u];
        const T c = c_prev[(size_t)n * H + u];
        const T tc = tanh_c[(size_t)n * H + u];
        const T oc = o * dtanh_c[(size_t)n * H + u];  // o (1 - tanh^2 c')
        T v;
        if (col < H) {  // d/dh_{t-1}: needs W rows of unit u, column col
            const size_t rc = (size_t)u * H + col;
            const T dcdh = (c * df) * w_hh[HH + rc] + (g * di) * w_hh[rc] + (i * dg) * w_hh[2 * HH + rc];
            v = row < H ? (tc * dout) * w_hh[3 * HH + rc] + oc * dcdh : dcdh;
        } else {        // d/dc_{t-1}: diagonal blocks
            const bool diag = (col - H) == u;
            v = diag ? (row < H ? oc * f : f) : (T)0;
        }
        J[e] = v;
    });
}

template <typename T>
__device__ void gru_jacobians_impl(const T* __restrict__ gates, const T* __restrict__ dgates,
                                   const T* __restrict__ h_prev, const T* __restrict__ hn,
                                   const T* __restrict__ omz, const T* __restrict__ w_hh,
                                   T* __restrict__ J, long long N, int H) {
    const size_t HH = (size_t)H * H;
    for_each_entry(N, (long long)H, [&](long long e, long long n, int row, int col) {
        const T* gn = gates + (size_t)n * 3 * H;
        const T* dn = dgates + (size_t)n * 3 * H;
        const T r = gn[row], z = gn[H + row], nn = gn[2 * H + row];
        const T dr = dn[row], dz = dn[H + row], dnn = dn[2 * H + row];
        const T h = h_prev[(size_t)n * H + row];
        const T a = hn[(size_t)n * H + row];
        const T uu = omz[(size_t)n * H + row] * dnn;  // (1 - z)(1 - n^2)
        const size_t rc = (size_t)row * H + col;
        T v = ((h - nn) * dz) * w_hh[HH + rc] + (uu * r) * w_hh[2 * HH + rc] + (uu * a * dr) * w_hh[rc];
        if (row == col) v += z;
        J[e] = v;
    });
}

#define GATE_JACOBIAN_KERNELS(T, SUFFIX)                                                      \
    extern "C" __global__ void lstm_jacobians_##SUFFIX(                                       \
        const T* gates, const T* dgates, const T* c_prev, const T* tanh_c, const T* dtanh_c,   \
        const T* w_hh, T* J, long long N, int H) {                                             \
        lstm_jacobians_impl<T>(gates, dgates, c_prev, tanh_c, dtanh_c, w_hh, J, N, H);        \
    }                                                                                          \
    extern "C" __global__ void gru_jacobians_##SUFFIX(                                        \
        const T* gates, const T* dgates, const T* h_prev, const T* hn, const T* omz,           \
        const T* w_hh, T* J, long long N, int H) {                                             \
        gru_jacobians_impl<T>(gates, dgates, h_prev, hn, omz, w_hh, J, N, H);                 \
    }

FOR_FLOAT_TYPES(GATE_JACOBIAN_KERNELS)
