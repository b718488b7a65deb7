// shim.h -- runs the CUDA kernels of src/bpttbench/kernels as host C++ (tests only).
//
// Prepended to the exact source CuPy compiles (cupy_backend.kernel_source). A launch runs the
// blocks one after another on the calling OS thread; the threads of a block are fibers
// (makecontext for the first entry, _setjmp/_longjmp afterwards: no signal-mask syscalls).
// A fiber runs until it reaches __syncthreads() or a warp shuffle, then yields to the block's
// scheduler, which resumes the fibers of each barrier interval in thread order or in a seeded
// shuffled order. Shared memory: static __shared__ arrays become thread_local statics (one
// copy per OS thread, shared by the fibers of the block); `extern __shared__ double smem[]`
// is the shim's buffer, filled with signalling NaNs before each block up to the launch's
// dynamic size plus a guard zone, so an uninitialised or out-of-range read gives NaN and a
// write past the dynamic size is reported. Errors (divergent barriers or shuffles, shared
// memory overruns) abort the launch with a message. One launch at a time per process (the
// scheduler state is global; the Python side holds a lock).
#pragma once
#include <math.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <ucontext.h>
#include <xmmintrin.h>

#include <algorithm>
#include <cstddef>
#include <memory>
#include <random>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ thread_local

struct dim3 {
    unsigned int x = 1, y = 1, z = 1;
};

namespace emu {
enum State { RUNNABLE = 0, AT_BARRIER = 1, AT_SHUFFLE = 2, DONE = 3 };
constexpr size_t STACK_BYTES = 64 * 1024;
constexpr size_t SMEM_MAX = 232448;      // H100 opt-in maximum (227 KB)
constexpr size_t SMEM_GUARD = 4096;
constexpr uint64_t POISON = 0x7FF400007FA00000ull;

struct Fiber {
    jmp_buf ctx;
    ucontext_t uc;
    int state = RUNNABLE;
    bool started = false;
    dim3 tid;
    int linear = 0;
    unsigned shfl_mask = 0;
    int shfl_src = 0;
    int site = 0;  // kernel line of the barrier or shuffle the fiber waits at
    uint64_t shfl_in = 0, shfl_out = 0;
    char* stack = nullptr;
};

inline Fiber* cur = nullptr;
inline jmp_buf sched_ctx;
inline dim3 block_idx, block_dim, grid_dim;
inline void (*thunk)(void**) = nullptr;
inline void** thunk_args = nullptr;
inline unsigned int csr = 0;
inline char err[512];

inline void yield(int state) {
    cur->state = state;
    if (!_setjmp(cur->ctx)) _longjmp(sched_ctx, 1);
}

// A fiber is entered once per launch (setcontext) and runs the kernel once per block: after a
// block it parks in DONE and the next block resumes it here (no context set-up per block).
inline void fiber_entry() {
    _mm_setcsr(csr);  // setcontext restored the context's MXCSR: impose the launch's (ftz or not)
    for (;;) {
        thunk(thunk_args);
        yield(DONE);
    }
}
}  // namespace emu

#define threadIdx (emu::cur->tid)
#define blockIdx (emu::block_idx)
#define blockDim (emu::block_dim)
#define gridDim (emu::grid_dim)

// dynamic shared memory (`extern __shared__ double smem[]` refers to this one)
alignas(16) thread_local double smem[(emu::SMEM_MAX + emu::SMEM_GUARD) / sizeof(double)];

// The kernel line of each barrier and shuffle is recorded: all threads of a block (lanes of a
// warp) must meet at the same one, as CUDA requires.
namespace emu {
inline void syncthreads(int line) {
    cur->site = line;
    yield(AT_BARRIER);
}

template <typename T>
T shfl_xor(int line, unsigned mask, T v, int lane_mask, int width = 32) {
    static_assert(sizeof(T) <= 8, "shuffle of a type wider than 8 bytes");
    cur->site = line;
    const int lane = cur->linear & 31;
    emu::cur->shfl_mask = mask;
    emu::cur->shfl_in = 0;
    memcpy(&emu::cur->shfl_in, &v, sizeof(T));
    int src = lane ^ lane_mask;
    if ((src / width) != (lane / width)) src = lane;  // outside the segment: own value
    emu::cur->shfl_src = src;
    emu::yield(emu::AT_SHUFFLE);
    T out;
    memcpy(&out, &emu::cur->shfl_out, sizeof(T));
    return out;
}
}  // namespace emu

#define __syncthreads() emu::syncthreads(__LINE__)
#define __shfl_xor_sync(...) emu::shfl_xor(__LINE__, __VA_ARGS__)

namespace emu {
// Run one block; returns 0 or -1 with err set.
inline int run_block(std::vector<Fiber>& fibers, bool shuffle, unsigned long long seed,
                     size_t dyn_smem) {
    const int n = (int)fibers.size();
    // poison: a double signalling NaN whose float halves are NaNs too (arithmetic on it gives a
    // quiet NaN, so even a NaN computed from the poison and stored past the end is seen)
    const size_t nwords = (dyn_smem + SMEM_GUARD + 7) / 8;
    for (size_t o = 0; o < nwords; ++o) memcpy(&smem[o], &POISON, 8);
    for (int i = 0; i < n; ++i) fibers[i].state = RUNNABLE;
    std::mt19937_64 rng(seed);
    std::vector<int> order(n);
    const int nwarps = (n + 31) / 32;
    for (;;) {
        for (int i = 0; i < n; ++i) order[i] = i;
        if (shuffle) std::shuffle(order.begin(), order.end(), rng);
        for (int i : order) {
            Fiber& f = fibers[i];
            if (f.state != RUNNABLE) continue;
            cur = &f;
            if (!_setjmp(sched_ctx)) {
                if (!f.started) {
                    f.started = true;
                    setcontext(&f.uc);
                }
                _longjmp(f.ctx, 1);
            }
        }
        cur = nullptr;
        // every fiber is now at a barrier, at a shuffle or done: release warps first
        bool any_shuffle = false, all_done = true;
        for (int w = 0; w < nwarps; ++w) {
            const int lo = w * 32, hi = std::min(n, lo + 32);
            int at = 0;
            for (int i = lo; i < hi; ++i) at += fibers[i].state == AT_SHUFFLE;
            if (!at) continue;
            any_shuffle = true;
            if (at != hi - lo) {
                snprintf(err, sizeof err, "block (%u,%u,%u): warp %d: %d of %d lanes at a shuffle, the "
                         "others at a barrier or exited (divergent __shfl_xor_sync)",
                         block_idx.x, block_idx.y, block_idx.z, w, at, hi - lo);
                return -1;
            }
            const unsigned full = (hi - lo) == 32 ? 0xffffffffu : ((1u << (hi - lo)) - 1u);
            for (int i = lo; i < hi; ++i) {
                if (fibers[i].site != fibers[lo].site) {
                    snprintf(err, sizeof err, "block (%u,%u,%u): warp %d: lanes shuffle at different "
                             "lines of kernel.cu (%d and %d)", block_idx.x, block_idx.y, block_idx.z,
                             w, fibers[lo].site, fibers[i].site);
                    return -1;
                }
                if (fibers[i].shfl_mask != full) {
                    snprintf(err, sizeof err, "block (%u,%u,%u): lane %d shuffles with mask %#x, "
                             "the warp has mask %#x", block_idx.x, block_idx.y, block_idx.z, i,
                             fibers[i].shfl_mask, full);
                    return -1;
                }
            }
            for (int i = lo; i < hi; ++i) fibers[i].shfl_out = fibers[lo + fibers[i].shfl_src].shfl_in;
            for (int i = lo; i < hi; ++i) fibers[i].state = RUNNABLE;
        }
        if (any_shuffle) continue;
        int at_barrier = 0;
        for (int i = 0; i < n; ++i) {
            at_barrier += fibers[i].state == AT_BARRIER;
            all_done &= fibers[i].state == DONE;
        }
        if (all_done) break;
        if (at_barrier != n) {
            snprintf(err, sizeof err, "block (%u,%u,%u): %d of %d threads at __syncthreads(), the "
                     "others exited (divergent barrier)", block_idx.x, block_idx.y, block_idx.z,
                     at_barrier, n);
            return -1;
        }
        for (int i = 1; i < n; ++i) {
            if (fibers[i].site != fibers[0].site) {
                snprintf(err, sizeof err, "block (%u,%u,%u): threads wait at __syncthreads() on "
                         "different lines of kernel.cu (%d and %d)", block_idx.x, block_idx.y,
                         block_idx.z, fibers[0].site, fibers[i].site);
                return -1;
            }
        }
        for (int i = 0; i < n; ++i) fibers[i].state = RUNNABLE;
    }
    const unsigned char* sm = reinterpret_cast<const unsigned char*>(smem);
    const unsigned char* pz = reinterpret_cast<const unsigned char*>(&POISON);
    for (size_t o = dyn_smem; o < dyn_smem + SMEM_GUARD; ++o) {
        if (sm[o] != pz[o % 8]) {
            snprintf(err, sizeof err, "block (%u,%u,%u): write to dynamic shared memory at byte %zu, "
                     "past the launch's %zu bytes", block_idx.x, block_idx.y, block_idx.z, o, dyn_smem);
            return -1;
        }
    }
    return 0;
}
}  // namespace emu

// grid, block: 3 values each; seed 0 runs each barrier interval in thread order, otherwise in
// an order shuffled by (seed, block); ftz: flush float32 denormals (MXCSR FTZ|DAZ) as -ftz=true.
extern "C" int emu_launch(void (*thunk)(void**), void** args, const unsigned* grid,
                          const unsigned* block, size_t dyn_smem, unsigned long long seed, int ftz,
                          char* err_out, size_t err_len) {
    using namespace emu;
    if (dyn_smem > SMEM_MAX) {
        snprintf(err_out, err_len, "dynamic shared memory %zu > %zu", dyn_smem, SMEM_MAX);
        return -1;
    }
    const int n = (int)(block[0] * block[1] * block[2]);
    std::vector<Fiber> fibers(n);
    std::unique_ptr<char[]> stacks(new char[(size_t)n * STACK_BYTES]);  // not zeroed: cheap
    for (int i = 0; i < n; ++i) {
        Fiber& f = fibers[i];
        f.stack = stacks.get() + (size_t)i * STACK_BYTES;
        f.linear = i;
        f.tid.x = i % block[0];
        f.tid.y = (i / block[0]) % block[1];
        f.tid.z = i / (block[0] * block[1]);
        f.started = false;
        getcontext(&f.uc);
        f.uc.uc_stack.ss_sp = f.stack;
        f.uc.uc_stack.ss_size = STACK_BYTES;
        f.uc.uc_link = nullptr;
        makecontext(&f.uc, fiber_entry, 0);
    }
    block_dim = dim3{block[0], block[1], block[2]};
    grid_dim = dim3{grid[0], grid[1], grid[2]};
    emu::thunk = thunk;
    thunk_args = args;
    const unsigned int saved = _mm_getcsr();
    csr = ftz ? (saved | 0x8040u) : (saved & ~0x8040u);  // FTZ (bit 15) and DAZ (bit 6)
    int rc = 0;
    for (unsigned z = 0; z < grid[2] && !rc; ++z)
        for (unsigned y = 0; y < grid[1] && !rc; ++y)
            for (unsigned x = 0; x < grid[0] && !rc; ++x) {
                block_idx = dim3{x, y, z};
                const unsigned long long bseed =
                    seed ? seed * 0x9E3779B97F4A7C15ull + (((unsigned long long)z * grid[1] + y) *
                                                           grid[0] + x) : 0;
                rc = run_block(fibers, seed != 0, bseed, dyn_smem);
            }
    _mm_setcsr(saved);
    if (rc) snprintf(err_out, err_len, "%s", err);
    return rc;
}
