// batched_qr.cu -- batched small thin QR by modified Gram-Schmidt, applied twice ("twice is
// enough" re-orthogonalisation), accumulating log|diag R| in float64.
//
// For every batch element b, A_b [D, k] (D >= k) is overwritten by Q_b with orthonormal
// columns and diag(R_b) > 0 (so the QR is unique and sign-fixed, like the numpy/torch
// reference after its sign fix), and logacc[b, j] += log r_jj (R = R2 R1 of the two passes,
// whose diagonals multiply, so the two logs add).
//
// Memory layout (row-major, contiguous):
//   A       [B, D, k]  float or double, element (b, r, j) at (b*D + r)*k + j   (in/out)
//   logacc  [B, k]     double                                                  (in/out)
// Launch: grid = (B), block = (256) (a multiple of 32), one block per matrix.
//   Dynamic shared memory: 32*8 bytes, plus D*k*sizeof(T) when use_smem != 0: the matrix is
//   staged in shared memory (use it when it fits, e.g. D = k = 64 in float32 = 16 KB, or up
//   to the device's opt-in maximum); otherwise the block works on global memory (L2-resident
//   for these sizes), same code path.
// Limits: meant for D <= 256 (the LSTM's 2H with H <= 128, or H <= 256); any D works, with
//   k <= D. Dot products, squares and logs are float64; a zero column stays zero and gives
//   log r_jj = -inf (an exactly vanished direction). Deterministic (no atomics).

#define NTHREADS 256

__device__ __forceinline__ double warp_sum(double v) {
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

__device__ double block_sum(double v, double* red) {
    v = warp_sum(v);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int nwarps = (blockDim.x + 31) >> 5;
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    double s = 0.0;
    for (int w = 0; w < nwarps; ++w) s += red[w];
    return s;
}

template <typename T>
__device__ void block_mgs2(T* A, int D, int k, double* logacc, double* red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int nwarps = blockDim.x >> 5;
    for (int pass = 0; pass < 2; ++pass) {
        for (int j = 0; j < k; ++j) {
            double ss = 0.0;
            for (int r = threadIdx.x; r < D; r += blockDim.x) {
                const double v = (double)A[(size_t)r * k + j];
                ss += v * v;
            }
            ss = block_sum(ss, red);
            const double nrm = sqrt(ss);
            if (threadIdx.x == 0) logacc[j] += log(nrm);
            const T inv = nrm > 0.0 ? (T)(1.0 / nrm) : (T)0;
            for (int r = threadIdx.x; r < D; r += blockDim.x) A[(size_t)r * k + j] *= inv;
            __syncthreads();
            for (int p = j + 1 + warp; p < k; p += nwarps) {
                double dot = 0.0;
                for (int r = lane; r < D; r += 32)
                    dot += (double)A[(size_t)r * k + j] * (double)A[(size_t)r * k + p];
                dot = warp_sum(dot);
                const T c = (T)dot;
                for (int r = lane; r < D; r += 32) A[(size_t)r * k + p] -= c * A[(size_t)r * k + j];
            }
            __syncthreads();
        }
    }
}

template <typename T>
__device__ void mgs_qr_logdiag_impl(T* __restrict__ A, double* __restrict__ logacc, int B, int D,
                                    int k, int use_smem) {
    extern __shared__ double smem[];
    double* red = smem;                           // [32]
    T* stage = reinterpret_cast<T*>(smem + 32);   // [D*k] when use_smem
    const int b = blockIdx.x;
    if (b >= B) return;
    T* a = A + (size_t)b * D * k;
    T* work = a;
    const size_t n = (size_t)D * k;
    if (use_smem) {
        for (size_t o = threadIdx.x; o < n; o += blockDim.x) stage[o] = a[o];
        work = stage;
    }
    __syncthreads();
    // thread 0 adds the logs straight into logacc[b, :] (one writer per element)
    double* acc = logacc + (size_t)b * k;
    block_mgs2<T>(work, D, k, acc, red);
    __syncthreads();
    if (use_smem)
        for (size_t o = threadIdx.x; o < n; o += blockDim.x) a[o] = stage[o];
}

extern "C" __global__ void __launch_bounds__(NTHREADS)
    mgs_qr_logdiag_f32(float* A, double* logacc, int B, int D, int k, int use_smem) {
    mgs_qr_logdiag_impl<float>(A, logacc, B, D, k, use_smem);
}

extern "C" __global__ void __launch_bounds__(NTHREADS)
    mgs_qr_logdiag_f64(double* A, double* logacc, int B, int D, int k, int use_smem) {
    mgs_qr_logdiag_impl<double>(A, logacc, B, D, k, use_smem);
}
