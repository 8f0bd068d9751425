// CPU kernels of stn_jax.grid_sample, as XLA FFI custom calls: the backward
// pass (every mode) and the bilinear forward pass.
//
// They compute exactly the tap rules of the XLA path in _sampler_math.py
// (taken from PyTorch's grid_sampler): an output point reads 1, 4 or 16 input
// pixels ("taps"); the backward pass scatter-adds the output gradient into the
// image gradient and differentiates the tap weights for the grid gradient.
//
// Why C++: on the CPU, XLA's scatter costs about 2 ns per scalar update and
// the XLA formulation writes every per-tap array to memory, which made the
// backward pass 2-4x slower than PyTorch's; its gathers made the forward pass
// about 0.7x PyTorch's time where a bordered image copy (below) reads taps
// with no masks at all. Bicubic and nearest points are processed in blocks:
// the tap geometry of a block is computed in branch-free loops and kept in
// L1; then a scalar loop scatters. Bilinear points, the spatial transformer's
// case, take the leaner bordered path.
//
// Layout: image (..., H, W, C), grid (..., P, 2) with (x, y) in [-1, 1],
// out_grad (..., P, C). Leading axes are flattened into a batch axis that is
// split over threads; each batch element writes only its own slice, so no
// atomics are needed and the result is deterministic.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include "parallel_chunks.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

enum Mode : int32_t { kBilinear = 0, kNearest = 1, kBicubic = 2 };
enum Padding : int32_t { kZeros = 0, kBorder = 1, kReflection = 2 };
constexpr int kBlock = 64;

// Compile-time options: each (mode, padding, align_corners) combination is its
// own instantiation, so loops have constant trip counts and no option branches.
template <int32_t kMode_, int32_t kPadding_, bool kAlignCorners_>
struct Options {
  static constexpr int32_t kMode = kMode_;
  static constexpr int32_t kPadding = kPadding_;
  static constexpr bool kAlignCorners = kAlignCorners_;
  static constexpr int kTaps =
      kMode == kBicubic ? 4 : (kMode == kNearest ? 1 : 2);
};

// Clamp to [0, size - 1]; derivative 0 on and beyond the edges (as PyTorch).
template <typename T>
inline T Clip(T c, T high, T* grad) {
  *grad = ((c > T(0)) & (c < high)) ? T(1) : T(0);
  return std::min(std::max(c, T(0)), high);
}

// Reflect into [twice_low / 2, twice_high / 2]; branch-free.
template <typename T>
inline T Reflect(T c, T low, T span, T* grad) {
  const T shifted = c - low;
  const T sign = shifted < T(0) ? T(-1) : T(1);
  const T distance = std::fabs(shifted);
  const T flips = std::floor(distance / span);
  // fmod is exact (as PyTorch's and the XLA path's); distance - flips * span
  // would cancel catastrophically for far-away points.
  const T extra = std::fmod(distance, span);
  const bool even = flips - T(2) * std::floor(flips * T(0.5)) == T(0);
  *grad = even ? sign : -sign;
  return even ? extra + low : span - extra + low;
}

template <typename O, typename T>
inline T Pad(T c, int64_t size, T* grad) {
  const T high = static_cast<T>(size - 1);
  if constexpr (O::kPadding == kZeros) {
    *grad = T(1);
    return c;
  } else if constexpr (O::kPadding == kBorder) {
    return Clip(c, high, grad);
  } else {
    T reflect_grad, clip_grad;
    T reflected;
    if constexpr (O::kAlignCorners) {  // Mirror about the corner centres.
      reflected = size == 1 ? T(0)
                            : Reflect(c, T(0), static_cast<T>(size - 1),
                                      &reflect_grad);
      if (size == 1) reflect_grad = T(0);
    } else {  // Mirror about the outer edges.
      reflected = Reflect(c, T(-0.5), static_cast<T>(size), &reflect_grad);
    }
    const T clipped = Clip(reflected, high, &clip_grad);
    *grad = reflect_grad * clip_grad;
    return clipped;
  }
}

template <typename T>
inline void CubicWeights(T t, T* w, T* dw) {
  const T a = T(-0.75);
  auto near_value = [a](T x) { return ((a + 2) * x - (a + 3)) * x * x + 1; };
  auto near_slope = [a](T x) { return (3 * (a + 2) * x - 2 * (a + 3)) * x; };
  auto far_value = [a](T x) {
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a;
  };
  auto far_slope = [a](T x) { return (3 * a * x - 10 * a) * x + 8 * a; };
  w[0] = far_value(t + 1);
  dw[0] = far_slope(t + 1);
  w[1] = near_value(t);
  dw[1] = near_slope(t);
  w[2] = near_value(1 - t);
  dw[2] = -near_slope(1 - t);
  w[3] = far_value(2 - t);
  dw[3] = -far_slope(2 - t);
}

struct Geometry {
  int64_t batches, height, width, channels, points;
};

// Tap geometry of one axis for a block of points, structure of arrays.
template <typename O, typename T>
struct AxisBlock {
  alignas(64) int32_t position[O::kTaps][kBlock];
  alignas(64) T weight[O::kTaps][kBlock];    // zero where outside
  alignas(64) T d_weight[O::kTaps][kBlock];  // d weight / d coordinate
  alignas(64) uint8_t inside[O::kTaps][kBlock];
};

template <typename O, typename T>
inline void ComputeAxisBlock(const T* coord, int n, int64_t size,
                             AxisBlock<O, T>* out) {
  const T high = static_cast<T>(size - 1);
  const T scale = O::kAlignCorners ? high / 2 : static_cast<T>(size) / 2;
  for (int i = 0; i < n; ++i) {  // Vectorised by the compiler.
    T pixel = O::kAlignCorners
                  ? ((coord[i] + 1) / 2) * high
                  : ((coord[i] + 1) * static_cast<T>(size) - 1) / 2;
    // Far outside, zeros/border read the same at -4 or size + 3; reflection
    // does not (its taps are mirrored back in), so it is never bounded.
    if constexpr ((O::kMode == kBicubic && O::kPadding != kReflection) ||
                  O::kPadding == kZeros) {
      pixel = std::min(std::max(pixel, T(-4)), static_cast<T>(size + 3));
    }
    T where[O::kTaps], weight[O::kTaps], d_weight[O::kTaps];
    if constexpr (O::kMode == kBicubic) {
      const T start = std::floor(pixel);
      CubicWeights(pixel - start, weight, d_weight);
#pragma GCC unroll 4
      for (int k = 0; k < 4; ++k) {
        T unused;
        where[k] = Pad<O>(start + static_cast<T>(k - 1), size, &unused);
        d_weight[k] *= scale;
      }
    } else {
      T pad_grad;
      pixel = Pad<O>(pixel, size, &pad_grad);
      if constexpr (O::kMode == kNearest) {
        where[0] = std::nearbyint(pixel);  // Half to even, as PyTorch.
        weight[0] = T(1);
        d_weight[0] = T(0);
      } else {
        const T start = std::floor(pixel);
        const T frac = pixel - start;
        where[0] = start;
        where[1] = start + 1;
        weight[0] = 1 - frac;
        weight[1] = frac;
        d_weight[0] = -scale * pad_grad;
        d_weight[1] = scale * pad_grad;
      }
    }
#pragma GCC unroll 4
    for (int k = 0; k < O::kTaps; ++k) {
      const bool inside = (where[k] >= T(0)) & (where[k] <= high);
      out->inside[k][i] = inside;
      out->position[k][i] = static_cast<int32_t>(
          std::min(std::max(where[k], T(0)), high));
      out->weight[k][i] = inside ? weight[k] : T(0);
      out->d_weight[k][i] = inside ? d_weight[k] : T(0);
    }
  }
}


// Tap geometry of a block of up to kBlock consecutive output points.
template <typename O, typename T>
struct PointBlock {
  int size;
  alignas(64) uint8_t defined[kBlock];  // both coordinates finite
  AxisBlock<O, T> x, y;

  void Compute(const T* grid, int n, const Geometry& g) {
    alignas(64) T gx[kBlock], gy[kBlock];
    size = n;
    for (int i = 0; i < n; ++i) {
      const T cx = grid[2 * i], cy = grid[2 * i + 1];
      // A nan/inf coordinate is an undefined sample: it reads nothing.
      defined[i] = std::isfinite(cx) & std::isfinite(cy);
      gx[i] = defined[i] ? cx : T(0);
      gy[i] = defined[i] ? cy : T(0);
    }
    ComputeAxisBlock<O>(gx, n, g.width, &x);
    ComputeAxisBlock<O>(gy, n, g.height, &y);
  }

  // Whether tap (j, k) of point i reads a pixel; its offset in elements.
  bool Reads(int i, int j, int k) const {
    return defined[i] & y.inside[j][i] & x.inside[k][i];
  }
  int64_t Offset(int i, int j, int k, const Geometry& g, int64_t C) const {
    return (static_cast<int64_t>(y.position[j][i]) * g.width +
            x.position[k][i]) * C;
  }
};

// kChannels > 0 fixes the channel count at compile time (grey and RGB images):
// for so few channels the per-tap channel loops are otherwise mostly overhead.
// kImageGrad / kGridGrad: which gradients to compute. An STN's sampler reads
// the input image, which needs no gradient: then the scatter is skipped.
template <typename O, int kChannels, bool kImageGrad, bool kGridGrad,
          typename T>
void BackwardBatches(const T* image, const T* grid, const T* out_grad,
                     T* image_grad, T* grid_grad, const Geometry& g,
                     int64_t begin, int64_t end) {
  constexpr bool kDot = kGridGrad && O::kMode != kNearest;
  const int64_t C = kChannels > 0 ? kChannels : g.channels;
  const int64_t pixels = g.height * g.width;
  PointBlock<O, T> block;
  for (int64_t b = begin; b < end; ++b) {
    const T* image_b = image + b * pixels * C;
    T* image_grad_b = kImageGrad ? image_grad + b * pixels * C : nullptr;
    if constexpr (kImageGrad) {
      std::fill(image_grad_b, image_grad_b + pixels * C, T(0));
    }
    for (int64_t p0 = 0; p0 < g.points; p0 += kBlock) {
      const int n = static_cast<int>(std::min<int64_t>(kBlock, g.points - p0));
      block.Compute(grid + (b * g.points + p0) * 2, n, g);
      const T* up_block = out_grad + (b * g.points + p0) * C;
      T* grid_grad_p = kGridGrad ? grid_grad + (b * g.points + p0) * 2
                                 : nullptr;
      const auto& xs = block.x;
      const auto& ys = block.y;
      for (int i = 0; i < n; ++i) {
        T grad_x = T(0), grad_y = T(0);
        const T* up = up_block + i * C;
        for (int j = 0; j < O::kTaps; ++j) {
          for (int k = 0; k < O::kTaps; ++k) {
            if (!block.Reads(i, j, k)) continue;
            const int64_t q = block.Offset(i, j, k, g, C);
            if constexpr (kImageGrad) {
              // Taps may share a pixel (border padding): add one at a time.
              const T w = xs.weight[k][i] * ys.weight[j][i];
              T* dst = image_grad_b + q;
              for (int64_t c = 0; c < C; ++c) dst[c] += w * up[c];
            }
            if constexpr (kDot) {
              const T* src = image_b + q;
              T dot = T(0);
              for (int64_t c = 0; c < C; ++c) dot += src[c] * up[c];
              grad_x += xs.d_weight[k][i] * ys.weight[j][i] * dot;
              grad_y += xs.weight[k][i] * ys.d_weight[j][i] * dot;
            }
          }
        }
        if constexpr (kGridGrad) {
          grid_grad_p[2 * i] = grad_x;
          grid_grad_p[2 * i + 1] = grad_y;
        }
      }
    }
  }
}

// Calls fn(std::integral_constant<int, kChannels>) for the channel count.
template <typename Fn>
void WithChannels(int64_t channels, Fn fn) {
  if (channels == 1) {
    fn(std::integral_constant<int, 1>{});
  } else if (channels == 3) {
    fn(std::integral_constant<int, 3>{});
  } else {
    fn(std::integral_constant<int, 0>{});
  }
}

// Runs fn(begin, end) over [0, batches) in chunks on the calling thread
// and XLA's intra-op thread pool (parallel_chunks.h), for large work: below
// ~32k operations a chunk, handing it to another thread costs more than it
// saves.
template <typename Fn>
void ParallelOverBatches(ffi::ThreadPool& pool, int64_t batches,
                         int64_t work_per_batch, Fn fn) {
  const int64_t by_work =
      std::max<int64_t>(1, batches * work_per_batch / (1 << 15));
  stn_jax::InChunks(pool, batches,
                    std::min(by_work, 4 * int64_t{pool.num_threads()}), fn);
}

// Calls fn(Options<...>{}) for the runtime option codes.
template <typename Fn>
bool WithOptions(int32_t mode, int32_t padding, int32_t align_corners,
                 Fn fn) {
  auto with_align = [&](auto mode_c, auto padding_c) {
    constexpr int32_t m = decltype(mode_c)::value;
    constexpr int32_t p = decltype(padding_c)::value;
    if (align_corners) {
      fn(Options<m, p, true>{});
    } else {
      fn(Options<m, p, false>{});
    }
  };
  auto with_padding = [&](auto mode_c) {
    using Z = std::integral_constant<int32_t, kZeros>;
    using B = std::integral_constant<int32_t, kBorder>;
    using R = std::integral_constant<int32_t, kReflection>;
    switch (padding) {
      case kZeros: with_align(mode_c, Z{}); return true;
      case kBorder: with_align(mode_c, B{}); return true;
      case kReflection: with_align(mode_c, R{}); return true;
      default: return false;
    }
  };
  switch (mode) {
    case kBilinear:
      return with_padding(std::integral_constant<int32_t, kBilinear>{});
    case kNearest:
      return with_padding(std::integral_constant<int32_t, kNearest>{});
    case kBicubic:
      return with_padding(std::integral_constant<int32_t, kBicubic>{});
    default:
      return false;
  }
}

template <typename Buffer>
ffi::Error ReadGeometry(const Buffer& image, const Buffer& grid, Geometry* g) {
  auto dims = image.dimensions();
  if (dims.size() < 3 || grid.dimensions().size() < 2 ||
      grid.dimensions().back() != 2) {
    return ffi::Error::InvalidArgument("grid_sample_cpu: bad operand shapes");
  }
  g->height = dims[dims.size() - 3];
  g->width = dims[dims.size() - 2];
  g->channels = dims.back();
  const int64_t per_image = g->height * g->width * g->channels;
  g->batches = per_image ? image.element_count() / per_image : 0;
  g->points = g->batches ? grid.element_count() / (2 * g->batches) : 0;
  if (g->points * 2 * g->batches != grid.element_count()) {
    return ffi::Error::InvalidArgument("grid_sample_cpu: inconsistent shapes");
  }
  return ffi::Error::Success();
}

// Bilinear passes on a bordered copy of each image.
//
// The image is copied into a buffer with a zero border two pixels wide, so a
// point reads (or, for the image gradient, writes) its 2x2 taps with no
// bounds checks: a tap outside the image lands in the border, which reads 0
// (and whose gradient is dropped). With zeros padding a point far outside is
// moved to the border's outer corner (its taps all read zeros, as they would
// have read nothing); with border and reflection padding the coordinate is
// inside after padding and only a zero-weight tap can reach the border. An
// undefined (nan/inf) point reads the corner too, as does one whose padded
// coordinate is not finite. These loops run about twice as fast as the
// blocked tap geometry above (no masks, no weight derivatives per tap), which
// bicubic and nearest still use.
// The buffers cost (H + 4) * (W + 4) * C elements per chunk of work, so larger
// images take the blocked path.
constexpr int64_t kMaxBorderedElements = int64_t{1} << 21;

inline bool UsesBorderedBilinear(int32_t mode, const Geometry& g) {
  return mode == kBilinear &&
         (g.height + 4) * (g.width + 4) * g.channels <= kMaxBorderedElements;
}

// Where each of a block of n bilinear points reads in the bordered buffer:
// the offset of its tap (0, 0) in elements, its fractional position and, if
// kSlopes, d pixel / d coordinate per axis (the padding's derivative
// included). A point far outside (zeros padding) reads the outer corner, as
// does an undefined (nan/inf) point and one whose padded coordinate is not
// finite (reflecting an overflowed coordinate gives nan); those have
// fractions and slopes 0, so they read nothing.
// Branch-free, with the offset computed in T (exact: a bordered buffer has at
// most kMaxBorderedElements < 2^24 elements), so that GCC vectorises it for
// zeros and border padding (-fopt-info-vec; it needs -fno-trapping-math for
// floor). Reflection's fmod keeps that loop scalar.
template <typename O, bool kSlopes, typename T>
inline void LocateBilinearBlock(const T* grid_p, int n, const Geometry& g,
                                int64_t row, int64_t C, int32_t* offset,
                                T* fx, T* fy, T* slope_x, T* slope_y) {
  const T size_x = static_cast<T>(g.width), size_y = static_cast<T>(g.height);
  const T row_t = static_cast<T>(row), c_t = static_cast<T>(C);
  const T base_slope_x = O::kAlignCorners ? (size_x - 1) / 2 : size_x / 2;
  const T base_slope_y = O::kAlignCorners ? (size_y - 1) / 2 : size_y / 2;
  for (int i = 0; i < n; ++i) {
    const T cx = grid_p[2 * i], cy = grid_p[2 * i + 1];
    T px = O::kAlignCorners ? ((cx + 1) / 2) * (size_x - 1)
                            : ((cx + 1) * size_x - 1) / 2;
    T py = O::kAlignCorners ? ((cy + 1) / 2) * (size_y - 1)
                            : ((cy + 1) * size_y - 1) / 2;
    T grad_x = T(1), grad_y = T(1);
    if constexpr (O::kPadding == kZeros) {
      px = std::min(std::max(px, T(-4)), size_x + 3);
      py = std::min(std::max(py, T(-4)), size_y + 3);
    } else {
      px = Pad<O>(px, g.width, &grad_x);
      py = Pad<O>(py, g.height, &grad_y);
    }
    T x0 = std::floor(px), y0 = std::floor(py);
    const T frac_x = px - x0, frac_y = py - y0;
    if constexpr (O::kPadding == kZeros) {
      x0 = std::min(std::max(x0, T(-2)), size_x);
      y0 = std::min(std::max(y0, T(-2)), size_y);
    }
    const bool ok = std::isfinite(cx) & std::isfinite(cy) &
                    std::isfinite(px) & std::isfinite(py);
    x0 = ok ? x0 : T(-2);
    y0 = ok ? y0 : T(-2);
    fx[i] = ok ? frac_x : T(0);
    fy[i] = ok ? frac_y : T(0);
    if constexpr (kSlopes) {
      slope_x[i] = ok ? base_slope_x * grad_x : T(0);
      slope_y[i] = ok ? base_slope_y * grad_y : T(0);
    }
    offset[i] = static_cast<int32_t>((y0 + 2) * row_t + (x0 + 2) * c_t);
  }
}

// Copies image b (H, W, C) into the interior of a bordered buffer, or back.
template <typename T>
void ToBordered(const T* image, const Geometry& g, int64_t C, T* buffer) {
  const int64_t row = (g.width + 4) * C;
  for (int64_t y = 0; y < g.height; ++y) {
    std::copy(image + y * g.width * C, image + (y + 1) * g.width * C,
              buffer + (y + 2) * row + 2 * C);
  }
}

template <typename T>
void FromBordered(const T* buffer, const Geometry& g, int64_t C, T* image) {
  const int64_t row = (g.width + 4) * C;
  for (int64_t y = 0; y < g.height; ++y) {
    const T* src = buffer + (y + 2) * row + 2 * C;
    std::copy(src, src + g.width * C, image + y * g.width * C);
  }
}

template <typename O, int kChannels, typename T>
void BilinearForwardBatches(const T* image, const T* grid, T* out,
                            const Geometry& g, int64_t begin, int64_t end) {
  const int64_t C = kChannels > 0 ? kChannels : g.channels;
  const int64_t row = (g.width + 4) * C;
  std::vector<T> buffer((g.height + 4) * row, T(0));
  for (int64_t b = begin; b < end; ++b) {
    ToBordered(image + b * g.height * g.width * C, g, C, buffer.data());
    const T* grid_b = grid + b * g.points * 2;
    T* out_b = out + b * g.points * C;
    // Points in blocks: first their taps (vectorised arithmetic; a bordered
    // buffer's offsets fit 32 bits), then the reads (scalar: gathers).
    alignas(64) int32_t offset[kBlock];
    alignas(64) T fx[kBlock], fy[kBlock];
    for (int64_t p0 = 0; p0 < g.points; p0 += kBlock) {
      const int n = static_cast<int>(std::min<int64_t>(kBlock, g.points - p0));
      const T* grid_p = grid_b + 2 * p0;
      LocateBilinearBlock<O, false>(grid_p, n, g, row, C, offset, fx, fy,
                                    static_cast<T*>(nullptr),
                                    static_cast<T*>(nullptr));
      T* out_p = out_b + p0 * C;
      for (int i = 0; i < n; ++i) {
        const T* q = buffer.data() + offset[i];
        // The XLA path's sum: taps in row-major order, weight wx * wy.
        const T w00 = (1 - fx[i]) * (1 - fy[i]), w01 = fx[i] * (1 - fy[i]);
        const T w10 = (1 - fx[i]) * fy[i], w11 = fx[i] * fy[i];
        T* dst = out_p + i * C;
        for (int64_t c = 0; c < C; ++c) {
          dst[c] = w00 * q[c] + w01 * q[C + c] + w10 * q[row + c] +
                   w11 * q[row + C + c];
        }
      }
    }
  }
}

template <typename O, int kChannels, bool kImageGrad, bool kGridGrad,
          typename T>
void BilinearBackwardBatches(const T* image, const T* grid, const T* out_grad,
                             T* image_grad, T* grid_grad, const Geometry& g,
                             int64_t begin, int64_t end) {
  const int64_t C = kChannels > 0 ? kChannels : g.channels;
  const int64_t row = (g.width + 4) * C;
  const int64_t bordered = (g.height + 4) * row;
  std::vector<T> values(kGridGrad ? bordered : 0, T(0));
  std::vector<T> grads(kImageGrad ? bordered : 0, T(0));
  for (int64_t b = begin; b < end; ++b) {
    const int64_t image_offset = b * g.height * g.width * C;
    if constexpr (kGridGrad) {
      ToBordered(image + image_offset, g, C, values.data());
    }
    if constexpr (kImageGrad) {
      std::fill(grads.begin(), grads.end(), T(0));
    }
    const T* grid_b = grid + b * g.points * 2;
    alignas(64) int32_t offset[kBlock];
    alignas(64) T fx[kBlock], fy[kBlock], slope_x[kBlock], slope_y[kBlock];
    for (int64_t p0 = 0; p0 < g.points; p0 += kBlock) {
      const int n = static_cast<int>(std::min<int64_t>(kBlock, g.points - p0));
      const T* grid_p = grid_b + 2 * p0;
      LocateBilinearBlock<O, true>(grid_p, n, g, row, C, offset, fx, fy,
                                   slope_x, slope_y);
      for (int i = 0; i < n; ++i) {
        const T* up = out_grad + (b * g.points + p0 + i) * C;
        if constexpr (kImageGrad) {
          // One tap at a time: taps may share a pixel (border padding).
          const T w00 = (1 - fx[i]) * (1 - fy[i]), w01 = fx[i] * (1 - fy[i]);
          const T w10 = (1 - fx[i]) * fy[i], w11 = fx[i] * fy[i];
          T* dst = grads.data() + offset[i];
          for (int64_t c = 0; c < C; ++c) dst[c] += w00 * up[c];
          for (int64_t c = 0; c < C; ++c) dst[C + c] += w01 * up[c];
          for (int64_t c = 0; c < C; ++c) dst[row + c] += w10 * up[c];
          for (int64_t c = 0; c < C; ++c) dst[row + C + c] += w11 * up[c];
        }
        if constexpr (kGridGrad) {
          // <tap value, output gradient> per tap; the weights' derivatives
          // are +-slope along their axis times the other axis's weight.
          const T* q = values.data() + offset[i];
          T d00 = 0, d01 = 0, d10 = 0, d11 = 0;
          for (int64_t c = 0; c < C; ++c) {
            d00 += q[c] * up[c];
            d01 += q[C + c] * up[c];
            d10 += q[row + c] * up[c];
            d11 += q[row + C + c] * up[c];
          }
          T* out = grid_grad + (b * g.points + p0 + i) * 2;
          out[0] = slope_x[i] *
                   ((1 - fy[i]) * (d01 - d00) + fy[i] * (d11 - d10));
          out[1] = slope_y[i] *
                   ((1 - fx[i]) * (d10 - d00) + fx[i] * (d11 - d01));
        }
      }
    }
    if constexpr (kImageGrad) {
      FromBordered(grads.data(), g, C, image_grad + image_offset);
    }
  }
}

template <ffi::DataType D>
ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<D> image, ffi::Buffer<D> grid,
                    ffi::Buffer<D> out_grad, ffi::ResultBuffer<D> image_grad,
                    ffi::ResultBuffer<D> grid_grad, int32_t mode,
                    int32_t padding, int32_t align_corners,
                    int32_t want_image_grad, int32_t want_grid_grad) {
  using T = ffi::NativeType<D>;
  Geometry g;
  if (auto error = ReadGeometry(image, grid, &g); error.failure()) {
    return error;
  }
  if (out_grad.element_count() != g.batches * g.points * g.channels ||
      // A gradient that is not wanted has an empty result buffer.
      image_grad->element_count() !=
          (want_image_grad ? image.element_count() : 0) ||
      grid_grad->element_count() !=
          (want_grid_grad ? grid.element_count() : 0)) {
    return ffi::Error::InvalidArgument("grid_sample_cpu: inconsistent shapes");
  }
  const T* image_data = image.typed_data();
  const T* grid_data = grid.typed_data();
  const T* out_grad_data = out_grad.typed_data();
  T* image_grad_data = image_grad->typed_data();
  T* grid_grad_data = grid_grad->typed_data();
  const bool bordered = UsesBorderedBilinear(mode, g);
  const bool known = WithOptions(mode, padding, align_corners, [&](auto o) {
    using O = decltype(o);
    ParallelOverBatches(
        pool,
        g.batches, g.points * (2 * O::kTaps * O::kTaps * g.channels + 32),
        [&](int64_t begin, int64_t end) {
          WithChannels(g.channels, [&](auto channels) {
            constexpr int kC = decltype(channels)::value;
            auto run = [&](auto image_c, auto grid_c) {
              constexpr bool kImage = decltype(image_c)::value;
              constexpr bool kGrid = decltype(grid_c)::value;
              if constexpr (O::kMode == kBilinear) {
                if (bordered) {
                  BilinearBackwardBatches<O, kC, kImage, kGrid>(
                      image_data, grid_data, out_grad_data, image_grad_data,
                      grid_grad_data, g, begin, end);
                  return;
                }
              }
              BackwardBatches<O, kC, kImage, kGrid>(
                  image_data, grid_data, out_grad_data, image_grad_data,
                  grid_grad_data, g, begin, end);
            };
            using Yes = std::true_type;
            using No = std::false_type;
            if (want_image_grad && want_grid_grad) {
              run(Yes{}, Yes{});
            } else if (want_image_grad) {
              run(Yes{}, No{});
            } else if (want_grid_grad) {
              run(No{}, Yes{});
            }
          });
        });
  });
  if (!known) {
    return ffi::Error::InvalidArgument("grid_sample_cpu: unknown option code");
  }
  return ffi::Error::Success();
}

template <ffi::DataType D>
ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<D> image, ffi::Buffer<D> grid,
                   ffi::ResultBuffer<D> out, int32_t mode, int32_t padding,
                   int32_t align_corners) {
  using T = ffi::NativeType<D>;
  Geometry g;
  if (auto error = ReadGeometry(image, grid, &g); error.failure()) {
    return error;
  }
  if (out->element_count() != g.batches * g.points * g.channels) {
    return ffi::Error::InvalidArgument("grid_sample_cpu: inconsistent shapes");
  }
  const T* image_data = image.typed_data();
  const T* grid_data = grid.typed_data();
  T* out_data = out->typed_data();
  if (!UsesBorderedBilinear(mode, g)) {
    return ffi::Error::InvalidArgument(
        "grid_sample_cpu: the forward kernel is for bilinear images of at "
        "most kMaxBorderedElements bordered elements");
  }
  const bool known = WithOptions(mode, padding, align_corners, [&](auto o) {
    using O = decltype(o);
    if constexpr (O::kMode == kBilinear) {
      ParallelOverBatches(
          pool,
          g.batches, g.points * (4 * g.channels + 24),
          [&](int64_t begin, int64_t end) {
            WithChannels(g.channels, [&](auto channels) {
              BilinearForwardBatches<O, decltype(channels)::value>(
                  image_data, grid_data, out_data, g, begin, end);
            });
          });
    }
  });
  if (!known) {
    return ffi::Error::InvalidArgument("grid_sample_cpu: unknown option code");
  }
  return ffi::Error::Success();
}

}  // namespace

#define STN_BACKWARD_BINDING(D)  \
  ffi::Ffi::Bind()               \
      .Ctx<ffi::ThreadPool>()    \
      .Arg<ffi::Buffer<D>>()     \
      .Arg<ffi::Buffer<D>>()     \
      .Arg<ffi::Buffer<D>>()     \
      .Ret<ffi::Buffer<D>>()     \
      .Ret<ffi::Buffer<D>>()     \
      .Attr<int32_t>("mode")     \
      .Attr<int32_t>("padding")  \
      .Attr<int32_t>("align_corners")  \
      .Attr<int32_t>("want_image_grad") \
      .Attr<int32_t>("want_grid_grad")

XLA_FFI_DEFINE_HANDLER_SYMBOL(StnGridSampleBackwardF32, Backward<ffi::F32>,
                              STN_BACKWARD_BINDING(ffi::F32));
XLA_FFI_DEFINE_HANDLER_SYMBOL(StnGridSampleBackwardF64, Backward<ffi::F64>,
                              STN_BACKWARD_BINDING(ffi::F64));

#define STN_FORWARD_BINDING(D)   \
  ffi::Ffi::Bind()               \
      .Ctx<ffi::ThreadPool>()    \
      .Arg<ffi::Buffer<D>>()     \
      .Arg<ffi::Buffer<D>>()     \
      .Ret<ffi::Buffer<D>>()     \
      .Attr<int32_t>("mode")     \
      .Attr<int32_t>("padding")  \
      .Attr<int32_t>("align_corners")

XLA_FFI_DEFINE_HANDLER_SYMBOL(StnGridSampleForwardF32, Forward<ffi::F32>,
                              STN_FORWARD_BINDING(ffi::F32));
XLA_FFI_DEFINE_HANDLER_SYMBOL(StnGridSampleForwardF64, Forward<ffi::F64>,
                              STN_FORWARD_BINDING(ffi::F64));
