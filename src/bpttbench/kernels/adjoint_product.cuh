// adjoint_product.cuh -- the product with W^T that every BPTT delta kernel applies to its two
// columns (the working-dtype column and the rescaled one). Included by bptt_delta.cu and
// bptt_delta_gated.cu (inlined by cupy_kernels.kernel_source).

// (W^T x)_r for the two columns x[0, n) and x[n, 2n) held in shared memory, W [n, H] row-major
// in global memory: one output row r per call, summed in the working dtype in the order j =
// 0..n-1 (the order torch's reference path is compared against).
template <typename T>
__device__ __forceinline__ void wt_two_columns(const T* w, const T* x, int n, int H, int r,
                                               T& m0, T& m1) {
    m0 = T(0);
    m1 = T(0);
    for (int j = 0; j < n; ++j) {
        const T wj = w[(size_t)j * H + r];
        m0 += wj * x[j];
        m1 += wj * x[n + j];
    }
}
