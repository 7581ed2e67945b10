// Multi-scale deformable attention: what the CPU and CUDA kernels share.
//
// Layouts (all contiguous):
//   value               (B, S, H, D)        S = sum over levels of h_l * w_l
//   spatial_shapes      (L, 2) int64        (h_l, w_l)
//   level_start_index   (L,)   int64        offset of level l in S
//   sampling_locations  (B, Q, H, L, P, 2)  normalised (x, y), opmath type
//   attention_weights   (B, Q, H, L, P)     opmath type
//   output              (B, Q, H * D)
// A "group" is one (b, q, h): group = (b * Q + q) * H + h indexes the output rows of D values and the
// L * P sampling points that feed them.
#pragma once

#include <ATen/ATen.h>
#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define MSDA_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define MSDA_HOST_DEVICE inline
#endif

namespace msda {

struct Sizes {
  int64_t B, S, H, D, Q, L, P;
};

// Bilinear footprint of one sampling point, with grid_sample(align_corners=False, padding_mode="zeros")
// semantics: location x in [0, 1] maps to the continuous pixel coordinate x * w - 0.5 (source_index). Corners are
// (y0, x0), (y0, x1), (y1, x0), (y1, x1); pixel[c] is the flat pixel index inside the level, or -1 where the
// corner falls outside (zero padding). Returns false when no corner is inside (also for NaN locations), so
// far-away points never reach the int conversion.
template <typename T>
struct Footprint {
  int64_t pixel[4];
  T weight[4];
  T fx, fy;  // fractional position inside the cell, for the location gradient
};

template <typename T>
MSDA_HOST_DEVICE T msda_floor(T v) {
#ifdef __CUDA_ARCH__
  return floor(v);
#else
  return std::floor(v);
#endif
}

// The pixel coordinate x * size - 0.5, computed with the reference's exact sequence of roundings
// (grid = 2 * loc - 1, then ATen's grid_sampler_unnormalize), so a location that lands on an integer
// coordinate (pixel centres: the offsets' initialisation) picks the same cell, hence the same one-sided
// location gradient, as grid_sample. On the host the product goes through a volatile so that the compiler
// cannot fuse it into an FMA (ATen's CPU grid_sample rounds it); nvcc fuses it as it does in ATen's kernel.
template <typename T>
MSDA_HOST_DEVICE T source_index(T loc, int64_t size) {
  const T grid = T(2) * loc - T(1);
#ifdef __CUDA_ARCH__
  return ((grid + T(1)) * static_cast<T>(size) - T(1)) / T(2);
#else
  volatile T scaled = (grid + T(1)) * static_cast<T>(size);
  return (scaled - T(1)) / T(2);
#endif
}

template <typename T>
MSDA_HOST_DEVICE bool bilinear_footprint(T loc_x, T loc_y, int64_t height, int64_t width, Footprint<T>& f) {
  const T x = source_index(loc_x, width), y = source_index(loc_y, height);
  // x == -1 is kept: its only in-bounds corner has weight 0 but still a location gradient.
  if (!(x >= T(-1) && y >= T(-1) && x < static_cast<T>(width) && y < static_cast<T>(height))) return false;
  const T x0f = msda_floor(x), y0f = msda_floor(y);
  const int64_t x0 = static_cast<int64_t>(x0f), y0 = static_cast<int64_t>(y0f);
  f.fx = x - x0f;
  f.fy = y - y0f;
  const bool left = x0 >= 0, right = x0 + 1 < width, top = y0 >= 0, bottom = y0 + 1 < height;
  f.pixel[0] = (top && left) ? y0 * width + x0 : -1;
  f.pixel[1] = (top && right) ? y0 * width + x0 + 1 : -1;
  f.pixel[2] = (bottom && left) ? (y0 + 1) * width + x0 : -1;
  f.pixel[3] = (bottom && right) ? (y0 + 1) * width + x0 + 1 : -1;
  f.weight[0] = (T(1) - f.fx) * (T(1) - f.fy);
  f.weight[1] = f.fx * (T(1) - f.fy);
  f.weight[2] = (T(1) - f.fx) * f.fy;
  f.weight[3] = f.fx * f.fy;
  return true;
}

// d(sum_c weight_c * v_c)/dx and /dy in cell units, given dots[c] = <grad_out, v_c> (0 for padded corners).
template <typename T>
MSDA_HOST_DEVICE void footprint_grad(const Footprint<T>& f, const T dots[4], T& dx, T& dy) {
  dx = (T(1) - f.fy) * (dots[1] - dots[0]) + f.fy * (dots[3] - dots[2]);
  dy = (T(1) - f.fx) * (dots[2] - dots[0]) + f.fx * (dots[3] - dots[1]);
}

// Host only. Checks what the Python layer guarantees (it gives the friendly errors); here only a safety net.
inline Sizes check_inputs(const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
                          const at::Tensor& sampling_locations, const at::Tensor& attention_weights) {
  TORCH_CHECK(value.dim() == 4 && sampling_locations.dim() == 6 && attention_weights.dim() == 5,
              "msda: expected value (B,S,H,D), sampling_locations (B,Q,H,L,P,2), attention_weights (B,Q,H,L,P)");
  Sizes n{value.size(0), value.size(1), value.size(2), value.size(3),
          sampling_locations.size(1), sampling_locations.size(3), sampling_locations.size(4)};
  TORCH_CHECK(sampling_locations.size(0) == n.B && sampling_locations.size(2) == n.H && sampling_locations.size(5) == 2,
              "msda: sampling_locations shape ", sampling_locations.sizes(), " does not match value ", value.sizes());
  TORCH_CHECK(attention_weights.sizes() == sampling_locations.sizes().slice(0, 5),
              "msda: attention_weights shape ", attention_weights.sizes(), " does not match sampling_locations ",
              sampling_locations.sizes());
  TORCH_CHECK(spatial_shapes.dim() == 2 && spatial_shapes.size(0) == n.L && spatial_shapes.size(1) == 2 &&
                  level_start_index.dim() == 1 && level_start_index.size(0) == n.L,
              "msda: spatial_shapes must be (L, 2) and level_start_index (L,) with L = ", n.L);
  TORCH_CHECK(spatial_shapes.scalar_type() == at::kLong && level_start_index.scalar_type() == at::kLong,
              "msda: spatial_shapes and level_start_index must be int64");
  const auto opmath = at::toOpMathType(value.scalar_type());
  TORCH_CHECK(sampling_locations.scalar_type() == opmath && attention_weights.scalar_type() == opmath,
              "msda: sampling_locations and attention_weights must be ", opmath, " for value of type ",
              value.scalar_type());
  for (const at::Tensor* t : {&value, &spatial_shapes, &level_start_index, &sampling_locations, &attention_weights}) {
    TORCH_CHECK(t->is_contiguous(), "msda: inputs must be contiguous");
    TORCH_CHECK(t->device() == value.device(), "msda: inputs must be on ", value.device());
  }
  return n;
}

// The backward's incoming gradient: (B, Q, H*D), contiguous, value's dtype and device.
inline void check_grad_output(const at::Tensor& grad_output, const at::Tensor& value, const Sizes& n) {
  TORCH_CHECK(grad_output.is_contiguous() && grad_output.scalar_type() == value.scalar_type() &&
                  grad_output.device() == value.device() &&
                  grad_output.sizes() == at::IntArrayRef({n.B, n.Q, n.H * n.D}),
              "msda: grad_output must be a contiguous (B, Q, H*D) tensor of value's dtype, got ", grad_output.sizes());
}

}  // namespace msda
