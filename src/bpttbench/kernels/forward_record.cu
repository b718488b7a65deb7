// forward_record.cu -- the recurrent cell's forward pass and the record the Jacobian engine
// keeps (bpttbench.jacobians.analytic.Saved) as one persistent kernel per chunk of steps (the
// CuPy wrapper is bpttbench.jacobians.cupy_kernels.forward_record, driven by
// bpttbench.jacobians.cupy_forward on the cupy backend).
//
// The math is analytic.forward_saved's, formula for formula. The input part of every gate,
// gi = x W_ih^T + b_ih, comes in for all steps at once (one matmul before the first launch);
// per step, with gh = W_hh h + b_hh (torch's gate order, sums over k = 0..H-1 in the working
// dtype: a fixed order, deterministic), s(a) = 1 / (1 + exp(-a)) and
// sech2(a) = 4 e / ((1 + e)(1 + e)), e = exp(-2|a|) (derivatives from the pre-activations):
//   rnn_tanh:   a = gi + gh; h' = tanh(a);   deriv = sech2(a)
//   rnn_relu:   a = gi + gh; h' = a (a > 0); deriv = (a > 0)
//   rnn_linear: a = gi + gh; h' = a;         deriv = 1
//   lstm: a = gi + gh = (a_i, a_f, a_g, a_o); i, f, o = s(a_.), g = tanh(a_g);
//         c' = f c + i g; h' = o tanh(c');
//         gates = (i, f, g, o), dgates = (s(a_i) s(-a_i), s(a_f) s(-a_f), sech2(a_g),
//         s(a_o) s(-a_o)), prev = c, aux = tanh(c'), aux2 = sech2(c')
//   gru:  a_r = gi_r + gh_r, a_z = gi_z + gh_z; r, z = s(a_.); a_n = gi_n + r gh_n;
//         n = tanh(a_n); h' = (1 - z) n + z h;
//         gates = (r, z, n), dgates = (s(a_r) s(-a_r), s(a_z) s(-a_z), sech2(a_n)),
//         prev = h, aux = gh_n = W_hn h + b_hn, aux2 = s(-a_z)
// One block per batch element carries the state (h, and c for the LSTM) in shared memory
// through n_steps steps without leaving the kernel; thread j % NTHREADS owns unit j (all of its
// gates, so c_j is only ever touched by its owner). h is double-buffered: step s reads one
// buffer and writes the other, one barrier per step.
//
// Memory layout (row-major, contiguous), G = H (rnn_*), 4H (LSTM), 3H (GRU):
//   gi      [T, B, G]  T  x W_ih^T + b_ih, every step                               (in)
//   w_hh_t  [H, G]     T  W_hh transposed: thread j reads w_hh_t[k, q H + j], coalesced (in)
//   b_hh    [G]        T                                                            (in)
//   h       [B, H]     T  the hidden state, carried in and out                    (in/out)
//   c       [B, H]     T  LSTM only: the cell state, carried in and out           (in/out)
//   rnn_*:  deriv [T, B, H]                                                         (out)
//   lstm, gru: gates [T, B, G], dgates [T, B, G], prev, aux, aux2 [T, B, H]          (out)
// Step s (0 <= s < n_steps) is time index t = t_first + s (the record's row t: what
// J_{t+1} needs); a chunk of steps per launch, the state carried across launches in h, c.
// Launch: grid = (B), block = (NTHREADS, launch.cuh); dynamic shared memory
//   (2 H + (LSTM ? H : 0)) * sizeof(T) bytes (h twice, c).
// Limits: that must fit the 48 KB available without opt-in: rnn_* and GRU H <= 6144 in
//   float32, 3072 in float64; LSTM H <= 4096 in float32, 2048 in float64 (beyond, the cupy
//   backend runs the torch forward and warns); blockDim.x must be NTHREADS (unit ownership);
//   t_first + n_steps <= T. W_hh is read from global memory (L2) every step: per step and
//   block G * H multiply-adds spread over NTHREADS threads.

#include "launch.cuh"

__device__ __forceinline__ float fr_exp(float x) { return expf(x); }
__device__ __forceinline__ double fr_exp(double x) { return exp(x); }
__device__ __forceinline__ float fr_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double fr_tanh(double x) { return tanh(x); }
__device__ __forceinline__ float fr_abs(float x) { return fabsf(x); }
__device__ __forceinline__ double fr_abs(double x) { return fabs(x); }

// s(a) = 1 / (1 + exp(-a)): accurate on both tails (s(-a) for large a is exp(-a) to rounding)
template <typename T>
__device__ __forceinline__ T fr_sigmoid(T a) {
    return T(1) / (T(1) + fr_exp(-a));
}

// 1 - tanh^2(a) = 4 e / (1 + e)^2 with e = exp(-2|a|) (analytic.sech2)
template <typename T>
__device__ __forceinline__ T fr_sech2(T a) {
    const T e = fr_exp(T(-2) * fr_abs(a));
    return T(4) * e / ((T(1) + e) * (T(1) + e));
}

enum { RNN_TANH = 0, RNN_RELU = 1, RNN_LINEAR = 2, LSTM = 3, GRU = 4 };

template <typename T, int KIND>
__device__ void forward_record_impl(const T* __restrict__ gi, const T* __restrict__ w_hh_t,
                                    const T* __restrict__ b_hh, T* __restrict__ h_io,
                                    T* __restrict__ c_io, T* __restrict__ out0,
                                    T* __restrict__ out1, T* __restrict__ out2,
                                    T* __restrict__ out3, T* __restrict__ out4, int B, int H,
                                    int t_first, int n_steps) {
    constexpr int NG = KIND == LSTM ? 4 : (KIND == GRU ? 3 : 1);
    const int G = NG * H;
    extern __shared__ double smem[];
    T* hbuf = reinterpret_cast<T*>(smem);  // [2H] h, read from one half, written to the other
    T* c = hbuf + 2 * H;                   // [H] LSTM: the cell state
    const int b = blockIdx.x, tid = threadIdx.x;
    for (int j = tid; j < H; j += NTHREADS) {
        hbuf[j] = h_io[(size_t)b * H + j];
        if constexpr (KIND == LSTM) c[j] = c_io[(size_t)b * H + j];
    }
    __syncthreads();
    int cur = 0;
    for (int s = 0; s < n_steps; ++s) {
        const size_t row = (size_t)(t_first + s) * B + b;  // (t, b)
        const T* h = hbuf + cur * H;
        T* h_new = hbuf + (1 - cur) * H;
        const T* g_in = gi + row * G;
        for (int j = tid; j < H; j += NTHREADS) {
            T acc[NG];
            for (int q = 0; q < NG; ++q) acc[q] = T(0);
            for (int k = 0; k < H; ++k) {  // (W_hh h)_{qH+j}, k in order
                const T hk = h[k];
                const T* wk = w_hh_t + (size_t)k * G + j;
                for (int q = 0; q < NG; ++q) acc[q] += wk[(size_t)q * H] * hk;
            }
            T gh[NG];
            for (int q = 0; q < NG; ++q) gh[q] = acc[q] + b_hh[q * H + j];
            const size_t oh = row * H + j;  // [T, B, H] outputs
            const size_t og = row * G + j;  // [T, B, G] outputs, gate q at og + q H
            if constexpr (KIND == RNN_TANH || KIND == RNN_RELU || KIND == RNN_LINEAR) {
                const T a = g_in[j] + gh[0];
                if constexpr (KIND == RNN_TANH) {
                    h_new[j] = fr_tanh(a);
                    out0[oh] = fr_sech2(a);
                } else if constexpr (KIND == RNN_RELU) {
                    const T pos = a > T(0) ? T(1) : T(0);
                    h_new[j] = a * pos;
                    out0[oh] = pos;
                } else {
                    h_new[j] = a;
                    out0[oh] = T(1);  // 1 even if h overflows
                }
            } else if constexpr (KIND == LSTM) {
                const T a_i = g_in[j] + gh[0], a_f = g_in[H + j] + gh[1];
                const T a_g = g_in[2 * H + j] + gh[2], a_o = g_in[3 * H + j] + gh[3];
                const T i = fr_sigmoid(a_i), f = fr_sigmoid(a_f), g = fr_tanh(a_g),
                        o = fr_sigmoid(a_o);
                const T c_prev = c[j];
                const T c_new = f * c_prev + i * g;
                const T tc = fr_tanh(c_new);
                h_new[j] = o * tc;
                c[j] = c_new;  // owned by this thread
                out0[og] = i;
                out0[og + H] = f;
                out0[og + 2 * H] = g;
                out0[og + 3 * H] = o;
                out1[og] = i * fr_sigmoid(-a_i);
                out1[og + H] = f * fr_sigmoid(-a_f);
                out1[og + 2 * H] = fr_sech2(a_g);
                out1[og + 3 * H] = o * fr_sigmoid(-a_o);
                out2[oh] = c_prev;
                out3[oh] = tc;
                out4[oh] = fr_sech2(c_new);
            } else {  // GRU
                const T a_r = g_in[j] + gh[0], a_z = g_in[H + j] + gh[1];
                const T r = fr_sigmoid(a_r), z = fr_sigmoid(a_z);
                const T a_n = g_in[2 * H + j] + r * gh[2];
                const T n = fr_tanh(a_n);
                const T omz = fr_sigmoid(-a_z);  // 1 - z without cancellation
                const T h_prev = h[j];
                h_new[j] = (T(1) - z) * n + z * h_prev;
                out0[og] = r;
                out0[og + H] = z;
                out0[og + 2 * H] = n;
                out1[og] = r * fr_sigmoid(-a_r);
                out1[og + H] = z * omz;
                out1[og + 2 * H] = fr_sech2(a_n);
                out2[oh] = h_prev;
                out3[oh] = gh[2];
                out4[oh] = omz;
            }
        }
        __syncthreads();  // h_new complete, and every read of h done before it is overwritten
        cur = 1 - cur;
    }
    for (int j = tid; j < H; j += NTHREADS) {
        h_io[(size_t)b * H + j] = hbuf[cur * H + j];
        if constexpr (KIND == LSTM) c_io[(size_t)b * H + j] = c[j];
    }
}

// The vanilla RNNs share one signature (no cell state, no gate buffers).
#define FORWARD_RECORD_RNN_KERNEL(T, SUFFIX, NAME, KIND)                                     \
    extern "C" __global__ void __launch_bounds__(NTHREADS)                                   \
        forward_record_##NAME##_##SUFFIX(const T* gi, const T* w_hh_t, const T* b_hh, T* h,  \
                                         T* deriv, int B, int H, int t_first, int n_steps) { \
        forward_record_impl<T, KIND>(gi, w_hh_t, b_hh, h, nullptr, deriv, nullptr, nullptr,  \
                                     nullptr, nullptr, B, H, t_first, n_steps);              \
    }

#define FORWARD_RECORD_KERNELS(T, SUFFIX)                                                    \
    FORWARD_RECORD_RNN_KERNEL(T, SUFFIX, rnn_tanh, RNN_TANH)                                 \
    FORWARD_RECORD_RNN_KERNEL(T, SUFFIX, rnn_relu, RNN_RELU)                                 \
    FORWARD_RECORD_RNN_KERNEL(T, SUFFIX, rnn_linear, RNN_LINEAR)                             \
    extern "C" __global__ void __launch_bounds__(NTHREADS)                                   \
        forward_record_lstm_##SUFFIX(const T* gi, const T* w_hh_t, const T* b_hh, T* h,      \
                                     T* c, T* gates, T* dgates, T* prev, T* aux, T* aux2,    \
                                     int B, int H, int t_first, int n_steps) {               \
        forward_record_impl<T, LSTM>(gi, w_hh_t, b_hh, h, c, gates, dgates, prev, aux, aux2, \
                                     B, H, t_first, n_steps);                                \
    }                                                                                        \
    extern "C" __global__ void __launch_bounds__(NTHREADS)                                   \
        forward_record_gru_##SUFFIX(const T* gi, const T* w_hh_t, const T* b_hh, T* h,       \
                                    T* gates, T* dgates, T* prev, T* aux, T* aux2, int B,    \
                                    int H, int t_first, int n_steps) {                       \
        forward_record_impl<T, GRU>(gi, w_hh_t, b_hh, h, nullptr, gates, dgates, prev, aux,  \
                                    aux2, B, H, t_first, n_steps);                           \
    }

FOR_FLOAT_TYPES(FORWARD_RECORD_KERNELS)
