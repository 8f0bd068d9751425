// Image patches ("im2col") of a stride-1 2-D convolution, as an XLA FFI
// custom call: with them a convolution layer's forward pass and both of its
// gradients become one matrix product per chunk of images, which XLA's CPU
// backend runs faster than its own convolution for layers with many input
// channels (stn_jax/models/convolution.py, conv_weight_gradient='im2col';
// experiments/results/cpu_profile.md measures it).
//
// x (N, H, W, C) float32 -> patches (N, H_out, W_out, kh * kw * C), float32
// or bfloat16 (rounded to nearest even), the patch of output (y, x) being
// the input window whose top-left corner is (y - top, x - left), zero
// outside the image, in (i, j, c) order: the order of an HWIO kernel
// reshaped to (kh * kw * C, C_out). H_out and W_out are the result's; any
// sizes work. The rows (image, output row) are split over XLA's intra-op
// thread pool; the caller chunks the batch.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "parallel_chunks.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

inline uint16_t ToBfloat16(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  bits += 0x7FFF + ((bits >> 16) & 1);  // round to nearest even
  return static_cast<uint16_t>(bits >> 16);
}

// Patches of the rows [begin, end) of the (image, output row) grid.
template <typename Out>
void Patches(const float* x, Out* out, int64_t begin, int64_t end, int64_t h,
             int64_t w, int64_t c, int64_t h_out, int64_t w_out, int kh,
             int kw, int top, int left) {
  const int64_t k = int64_t(kh) * kw * c;
  for (int64_t index = begin; index < end; ++index) {
    const int64_t b = index / h_out, y = index % h_out;
    for (int64_t x_out = 0; x_out < w_out; ++x_out) {
      Out* dst = out + (index * w_out + x_out) * k;
      for (int i = 0; i < kh; ++i) {
        const int64_t row = y + i - top;
        for (int j = 0; j < kw; ++j, dst += c) {
          const int64_t col = x_out + j - left;
          if (row < 0 || row >= h || col < 0 || col >= w) {
            std::memset(dst, 0, c * sizeof(Out));
            continue;
          }
          const float* src = x + ((b * h + row) * w + col) * c;
          if constexpr (sizeof(Out) == 2) {
            for (int64_t ch = 0; ch < c; ++ch) dst[ch] = ToBfloat16(src[ch]);
          } else {
            std::memcpy(dst, src, c * sizeof(float));
          }
        }
      }
    }
  }
}

template <ffi::DataType T>
ffi::Error Im2col(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                  ffi::ResultBuffer<T> out,
                  int32_t kh, int32_t kw, int32_t top, int32_t left) {
  auto in = x.dimensions();
  auto dims = out->dimensions();
  if (in.size() != 4 || dims.size() != 4 ||
      dims[3] != int64_t(kh) * kw * in[3] || dims[0] != in[0]) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "im2col: x must be (N, H, W, C) and the result "
                      "(N, H_out, W_out, kh * kw * C)");
  }
  using Out = std::conditional_t<T == ffi::BF16, uint16_t, float>;
  Out* result = reinterpret_cast<Out*>(out->untyped_data());
  stn_jax::InChunks(pool, in[0] * dims[1], 2 * int64_t{pool.num_threads()}, [&](int64_t begin, int64_t end) {
    Patches(x.typed_data(), result, begin, end, in[1], in[2], in[3], dims[1],
            dims[2], kh, kw, top, left);
  });
  return ffi::Error::Success();
}

}  // namespace

#define STN_IM2COL_BINDING(T)                \
  ffi::Ffi::Bind()                           \
      .Ctx<ffi::ThreadPool>()                \
      .Arg<ffi::Buffer<ffi::F32>>()          \
      .Ret<ffi::Buffer<T>>()                 \
      .Attr<int32_t>("kh")                   \
      .Attr<int32_t>("kw")                   \
      .Attr<int32_t>("top")                  \
      .Attr<int32_t>("left")

XLA_FFI_DEFINE_HANDLER_SYMBOL(StnIm2colF32, Im2col<ffi::F32>,
                              STN_IM2COL_BINDING(ffi::F32));
XLA_FFI_DEFINE_HANDLER_SYMBOL(StnIm2colBF16, Im2col<ffi::BF16>,
                              STN_IM2COL_BINDING(ffi::BF16));
