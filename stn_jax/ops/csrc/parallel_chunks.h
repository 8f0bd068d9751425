// Splitting a kernel's work over XLA's intra-op thread pool, shared by
// grid_sample_cpu.cc and im2col_cpu.cc (both are compiled into one library
// by stn_jax/ops/_cpu_kernel.py).
//
// Why XLA's pool: its threads are the ones XLA has just run the preceding
// ops on, and they spin for a while when idle, so threads of our own would
// compete with them for the cores (on 2 cores that made the sampler about
// 1.5x slower), and so would scheduling one task per pool thread beside the
// working caller (measured: the caller plus threads - 1 tasks is fastest).

#ifndef STN_JAX_OPS_CSRC_PARALLEL_CHUNKS_H_
#define STN_JAX_OPS_CSRC_PARALLEL_CHUNKS_H_

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <utility>

#include "xla/ffi/api/ffi.h"

namespace stn_jax {

// Runs fn(begin, end) over [0, items) in `chunks` contiguous chunks
// (items * c / chunks to items * (c + 1) / chunks), on the calling thread
// and up to threads - 1 tasks of `pool`; with fewer than 2 chunks or 2
// threads, fn(0, items) on the caller. Chunks are claimed from a counter,
// so the call ends even if no pool thread ever runs a task; a task that
// starts late finds no chunk left and touches only the shared state, which
// it keeps alive. Returns when every chunk is done.
template <typename Fn>
void InChunks(xla::ffi::ThreadPool& pool, int64_t items, int64_t chunks,
              Fn fn) {
  const int64_t threads = pool.num_threads();
  chunks = std::min(chunks, items);
  if (threads < 2 || chunks < 2) {
    fn(int64_t{0}, items);
    return;
  }
  struct Shared {
    std::atomic<int64_t> next{0};
    std::mutex mutex;
    std::condition_variable all_done;
    int64_t done = 0;
  };
  auto shared = std::make_shared<Shared>();
  auto work = [shared, chunks, items, &fn] {
    for (int64_t c; (c = shared->next.fetch_add(1)) < chunks;) {
      fn(items * c / chunks, items * (c + 1) / chunks);
      std::lock_guard<std::mutex> lock(shared->mutex);
      if (++shared->done == chunks) shared->all_done.notify_all();
    }
  };
  for (int64_t i = 0; i < std::min(threads - 1, chunks - 1); ++i) {
    auto task = work;  // Schedule takes ownership of an rvalue
    pool.Schedule(std::move(task));
  }
  work();
  std::unique_lock<std::mutex> lock(shared->mutex);
  shared->all_done.wait(lock, [&] { return shared->done == chunks; });
}

}  // namespace stn_jax

#endif  // STN_JAX_OPS_CSRC_PARALLEL_CHUNKS_H_
