// block_reduce.cuh -- reductions and the block-wide QR shared by the kernels of this folder.
// Included by rnn_chain.cu and batched_qr.cu (the CuPy wrapper inlines it into the source,
// see cupy_kernels.kernel_source). A whole thread block works on one matrix; blockDim.x is a
// multiple of 32 and at most 1024; every sum is float64 in a fixed order (deterministic).

__device__ __forceinline__ double warp_sum(double v) {
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

// Sum over the block, returned to every thread.
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

// Two passes of modified Gram-Schmidt on A [D, k] (row-major) held by the whole block;
// logacc[j] += log r_jj of both passes (R = R2 R1, so the diagonals multiply).
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
