// launch.cuh -- the launch constants and the dtype instantiation shared by every kernel file.
// Included first by each .cu file (the CuPy loader inlines it, see
// bpttbench.jacobians.cupy_kernels.kernel_source); the Python launch wrappers read the
// constants below from this file, so block sizes are written in this one place.
//
// Launch constants (the kernels are written for them):
//   NTHREADS  threads per block of the one-block-per-matrix and grid-stride kernels
//             (a multiple of 32; also their __launch_bounds__)
//   TILE      side of the 2-D thread block (TILE x TILE) of the tiled RNN step
//   GRID_STRIDE_BLOCKS_MAX  most blocks of a 1-D grid-stride launch
//   FULL_FRAME_COLS  columns of U one block of full_frame_update computes (full_frame.cu)
// Layout and limits: none here; each kernel file documents its own.
//
// dtype instantiation, one way for every file: a file writes its extern "C" entry points
// once in a macro KERNELS(T, SUFFIX) and instantiates it with FOR_FLOAT_TYPES(KERNELS),
// which gives <name>_f32 (T = float) and <name>_f64 (T = double).

#define NTHREADS 256
#define TILE 16
#define GRID_STRIDE_BLOCKS_MAX 524280
#define FULL_FRAME_COLS 8

#define FOR_FLOAT_TYPES(KERNELS) \
    KERNELS(float, f32)          \
    KERNELS(double, f64)
