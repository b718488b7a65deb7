// batched_qr.cu -- batched small thin QR by modified Gram-Schmidt, applied twice ("twice is
// enough" re-orthogonalisation), accumulating log|diag R| in float64.
//
// For every batch element b, A_b [D, k] (D >= k) is overwritten by Q_b with orthonormal
// columns and diag(R_b) > 0 (so the QR is unique and sign-fixed, like the numpy/torch
// reference after its sign fix), and logacc[b, j] += log r_jj (R = R2 R1 of the two passes,
// whose diagonals multiply, so the two logs add).
//
// Two entry points, the same arithmetic (bit-identical Q and logs):
//   mgs_qr_logdiag:     in place, A -> Q, logacc += log|diag R| (the k-frame chain's QR step);
//   mgs_qr_logdiag_out: out of place, Q = QR of a const src, logacc = log|diag R| (overwritten:
//                       no zeroed buffer and no copy of src beforehand, the full-frame pass's
//                       QR, whose src M is still needed for R = Q^T M). src and A must not overlap.
//
// Memory layout (row-major, contiguous):
//   src     [B, D, k]  float or double, element (b, r, j) at (b*D + r)*k + j   (in, _out only)
//   A       [B, D, k]  same layout                                 (in/out; out only for _out)
//   logacc  [B, k]     double                                    (in/out; out only for _out)
// Launch: grid = (B), block = (NTHREADS = 256, launch.cuh) (a multiple of 32), one block per matrix.
//   Dynamic shared memory: 32*8 bytes, plus D*k*sizeof(T) when use_smem != 0: the matrix is
//   staged in shared memory. The wrapper (cupy_kernels.mgs_qr_logdiag) stages whenever that
//   total fits the device's opt-in maximum (227 KB on an H100, e.g. D = k = 160 in float64),
//   raising the kernel's max_dynamic_shared_size_bytes above 48 KB; otherwise the block
//   works on global memory (L2-resident for these sizes), same code path.
// Limits: meant for D <= 256 (the LSTM's 2H with H <= 128, or H <= 256); any D works, with
//   k <= D. Dot products, squares and logs are float64; a zero column stays zero and gives
//   log r_jj = -inf (an exactly vanished direction). Deterministic (no atomics).

#include "launch.cuh"
#include "block_reduce.cuh"

template <typename T>
__device__ void mgs_qr_logdiag_impl(const T* src, T* A, double* logacc, int B, int D, int k,
                                    int use_smem, bool overwrite) {
    extern __shared__ double smem[];
    double* red = smem;                           // [32]
    T* stage = reinterpret_cast<T*>(smem + 32);   // [D*k] when use_smem
    const int b = blockIdx.x;
    if (b >= B) return;
    T* a = A + (size_t)b * D * k;
    const T* in = src + (size_t)b * D * k;        // == a for the in-place kernel
    T* work = a;
    const size_t n = (size_t)D * k;
    if (use_smem) {
        for (size_t o = threadIdx.x; o < n; o += blockDim.x) stage[o] = in[o];
        work = stage;
    } else if (in != a) {
        for (size_t o = threadIdx.x; o < n; o += blockDim.x) a[o] = in[o];
    }
    // thread 0 adds the logs straight into logacc[b, :] (one writer per element)
    double* acc = logacc + (size_t)b * k;
    if (overwrite)
        for (int j = threadIdx.x; j < k; j += blockDim.x) acc[j] = 0.0;
    __syncthreads();
    block_mgs2<T>(work, D, k, acc, red);
    __syncthreads();
    if (use_smem)
        for (size_t o = threadIdx.x; o < n; o += blockDim.x) a[o] = stage[o];
}

#define BATCHED_QR_KERNELS(T, SUFFIX)                                                         \
    extern "C" __global__ void __launch_bounds__(NTHREADS)                                    \
        mgs_qr_logdiag_##SUFFIX(T* A, double* logacc, int B, int D, int k, int use_smem) {    \
        mgs_qr_logdiag_impl<T>(A, A, logacc, B, D, k, use_smem, false);                       \
    }                                                                                         \
    extern "C" __global__ void __launch_bounds__(NTHREADS)                                    \
        mgs_qr_logdiag_out_##SUFFIX(const T* src, T* A, double* logacc, int B, int D, int k,  \
                                    int use_smem) {                                           \
        mgs_qr_logdiag_impl<T>(src, A, logacc, B, D, k, use_smem, true);                      \
    }

FOR_FLOAT_TYPES(BATCHED_QR_KERNELS)
