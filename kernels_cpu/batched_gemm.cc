// Batched float32 GEMM for XLA:CPU through the XLA FFI, computed by the BLAS that SciPy
// ships (OpenBLAS). For every batch entry e: out[e] = op(a[e]) @ op(b[e]), row-major, where op
// transposes when the attribute trans_a / trans_b is set. Built and registered by
// batched_gemm.py, which also hands over the address of the BLAS sgemm (moejax_set_sgemm).
//
// The batch entries (or, when they are few, blocks of their output columns) are shared out
// over XLA's own intra-op thread pool, and the BLAS runs single-threaded: OpenBLAS's worker
// threads spin after each call and took the cores from XLA's threads (a dense FFN run after
// it measured 133 ms instead of 76 ms).
#include <dlfcn.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

// The Fortran sgemm of scipy.linalg.cython_blas (column-major, 32-bit integers).
using Sgemm = void (*)(const char*, const char*, const int*, const int*, const int*,
                       const float*, const float*, const int*, const float*, const int*,
                       const float*, float*, const int*);

static Sgemm sgemm = nullptr;

// Sets the sgemm and makes its library single-threaded; returns false if it could not be.
extern "C" bool moejax_set_sgemm(void* address) {
  sgemm = reinterpret_cast<Sgemm>(address);
  Dl_info info;
  if (dladdr(address, &info) == 0 || info.dli_fname == nullptr) return false;
  void* library = dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD);
  if (library == nullptr) return false;
  for (const char* name : {"scipy_openblas_set_num_threads", "openblas_set_num_threads"}) {
    if (auto set_threads = reinterpret_cast<void (*)(int)>(dlsym(library, name))) {
      set_threads(1);
      return true;
    }
  }
  return false;
}

// Runs body(0) ... body(count - 1) on the calling thread and up to num_threads - 1 pool tasks,
// which take indices from a shared counter; returns once every index is done. Tasks that start
// late find no index left, and the shared state outlives them.
template <typename Body>
static void ParallelFor(ffi::ThreadPool& pool, int64_t count, Body body) {
  struct State {
    std::atomic<int64_t> next{0};
    int64_t done = 0;
    std::mutex mutex;
    std::condition_variable all_done;
  };
  auto state = std::make_shared<State>();
  auto work = [state, count, body] {
    int64_t finished = 0;
    for (int64_t i = state->next++; i < count; i = state->next++) {
      body(i);
      ++finished;
    }
    if (finished == 0) return;
    std::lock_guard<std::mutex> lock(state->mutex);
    state->done += finished;
    if (state->done == count) state->all_done.notify_all();
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), count) - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule(decltype(work)(work));
  work();
  std::unique_lock<std::mutex> lock(state->mutex);
  state->all_done.wait(lock, [&] { return state->done == count; });
}

static ffi::Error BatchedGemm(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,
                              ffi::ResultBuffer<ffi::F32> out, bool trans_a, bool trans_b) {
  if (sgemm == nullptr) {
    return ffi::Error::InvalidArgument("moejax batched_gemm: the BLAS sgemm is not set");
  }
  auto a_dims = a.dimensions();
  auto b_dims = b.dimensions();
  auto out_dims = out->dimensions();
  if (a_dims.size() != 3 || b_dims.size() != 3 || out_dims.size() != 3) {
    return ffi::Error::InvalidArgument("moejax batched_gemm: operands must be [B, rows, cols]");
  }
  const int64_t batch = a_dims[0];
  const int64_t m = trans_a ? a_dims[2] : a_dims[1];
  const int64_t k = trans_a ? a_dims[1] : a_dims[2];
  const int64_t n = trans_b ? b_dims[1] : b_dims[2];
  const int64_t k_b = trans_b ? b_dims[2] : b_dims[1];
  if (b_dims[0] != batch || out_dims[0] != batch || k_b != k || out_dims[1] != m ||
      out_dims[2] != n) {
    return ffi::Error::InvalidArgument("moejax batched_gemm: inconsistent shapes");
  }
  float* out_data = out->typed_data();
  if (m == 0 || n == 0) return ffi::Error::Success();
  if (k == 0) {
    for (int64_t i = 0; i < batch * m * n; ++i) out_data[i] = 0.0f;
    return ffi::Error::Success();
  }
  // Work items are (batch entry, block of output columns). Few entries (an overflow block of
  // one expert) are split into column blocks so that every thread has work; the blocks depend
  // only on the shapes and the pool's size, so results are deterministic.
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  const int64_t wanted = std::min<int64_t>((4 * threads + batch - 1) / batch,
                                           std::max<int64_t>(1, n / 64));
  const int64_t width = ((n + wanted - 1) / wanted + 15) / 16 * 16;
  const int64_t blocks = (n + width - 1) / width;
  // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands.
  const int mi = static_cast<int>(m), ni = static_cast<int>(n), ki = static_cast<int>(k);
  const int lda = static_cast<int>(a_dims[2]), ldb = static_cast<int>(b_dims[2]);
  const char op_a = trans_a ? 'T' : 'N', op_b = trans_b ? 'T' : 'N';
  const float* a_data = a.typed_data();
  const float* b_data = b.typed_data();
  const int64_t a_size = a_dims[1] * a_dims[2], b_size = b_dims[1] * b_dims[2];
  const int64_t b_column_stride = trans_b ? b_dims[2] : 1;
  ParallelFor(pool, batch * blocks, [=](int64_t item) {
    const int64_t i = item / blocks, first = item % blocks * width;
    const int cols = static_cast<int>(std::min(width, n - first));
    const float one = 1.0f, zero = 0.0f;
    sgemm(&op_b, &op_a, &cols, &mi, &ki, &one, b_data + i * b_size + first * b_column_stride,
          &ldb, a_data + i * a_size, &lda, &zero, out_data + i * m * n + first, &ni);
  });
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(MoejaxBatchedGemm, BatchedGemm,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<bool>("trans_a")
                                  .Attr<bool>("trans_b"));
