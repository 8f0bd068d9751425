// Experiment (issue 31): image patches ("im2col") for a stride-1 2-D
// convolution, as an XLA FFI custom call, so that the convolution becomes
// one matrix product that XLA runs near the CPU's peak. Not used by the
// library; experiments/conv_im2col/bench.py measures it (see
// experiments/results/cpu_profile.md, "A convolution as patches and one
// matrix product").
//
// x (N, H, W, C) float32 -> patches (N, H_out, W_out, kh * kw * C), float32
// or bfloat16 (rounded to nearest even), the patch of output (y, x) being
// the input window whose top-left corner is (y - top, x - left), zero
// outside the image, in (i, j, c) order: the order of an HWIO kernel
// reshaped to (kh * kw * C, C_out). One thread; the caller chunks the batch.

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

inline uint16_t ToBfloat16(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  bits += 0x7FFF + ((bits >> 16) & 1);  // round to nearest even
  return static_cast<uint16_t>(bits >> 16);
}

template <typename Out>
void Patches(const float* x, Out* out, int64_t n, int64_t h, int64_t w,
             int64_t c, int64_t h_out, int64_t w_out, int kh, int kw, int top,
             int left) {
  const int64_t k = int64_t(kh) * kw * c;
  for (int64_t b = 0; b < n; ++b) {
    for (int64_t y = 0; y < h_out; ++y) {
      for (int64_t x_out = 0; x_out < w_out; ++x_out) {
        Out* dst = out + ((b * h_out + y) * w_out + x_out) * k;
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
}

template <ffi::DataType T>
ffi::Error Im2col(ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<T> out,
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
  Patches(x.typed_data(), reinterpret_cast<Out*>(out->untyped_data()), in[0],
          in[1], in[2], in[3], dims[1], dims[2], kh, kw, top, left);
  return ffi::Error::Success();
}

}  // namespace

#define STN_IM2COL_BINDING(T)                \
  ffi::Ffi::Bind()                           \
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
