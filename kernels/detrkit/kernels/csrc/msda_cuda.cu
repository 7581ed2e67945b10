// Multi-scale deformable attention on CUDA: forward and backward for float, double, half and bfloat16
// (arithmetic in float for the half types).
//
// Thread mapping: `tpg` consecutive lanes (a power of two <= 32, so groups never straddle a warp) cover the
// head dimension, each lane VEC consecutive channels (16-byte loads when the alignment allows), looping if
// D > tpg * VEC. Forward: such lane sets share the points of one (b, q, h); backward: one set per sampling
// point. Any B, Q, H, D, L, P works: there is no im2col step.
// Backward: lanes reduce their partial dot products with warp shuffles, so one lane writes each location /
// weight gradient (no atomics there); grad_value is scattered with atomicAdd into an opmath (fp32 for the
// half types) buffer, 16-byte vector atomics on sm_90+, and a lane's VEC is capped at one atomic's width.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>

#include "msda_common.h"

namespace msda {
namespace {

constexpr int kBlock = 256;

template <typename scalar_t, int VEC>
struct alignas(sizeof(scalar_t) * VEC) Vec {
  scalar_t v[VEC];
};

// grad[0:VEC] += values, with one vector atomic per 4 (or 2) floats where the hardware has them (sm_90+).
template <typename acc_t, int VEC>
__device__ __forceinline__ void atomic_add(acc_t* grad, const acc_t (&values)[VEC]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if constexpr (std::is_same_v<acc_t, float> && VEC % 4 == 0) {
#pragma unroll
    for (int k = 0; k < VEC; k += 4) {
      atomicAdd(reinterpret_cast<float4*>(grad + k), make_float4(values[k], values[k + 1], values[k + 2], values[k + 3]));
    }
  } else if constexpr (std::is_same_v<acc_t, float> && VEC % 2 == 0) {
#pragma unroll
    for (int k = 0; k < VEC; k += 2) atomicAdd(reinterpret_cast<float2*>(grad + k), make_float2(values[k], values[k + 1]));
  } else
#endif
  {
#pragma unroll
    for (int k = 0; k < VEC; ++k) atomicAdd(grad + k, values[k]);
  }
}

// The L * P points of a group are split over `slices` sets of tpg lanes (lane = slice * tpg + channel lane),
// whose partial sums meet through shuffles: more threads in flight to hide the latency of the gathers.
template <typename scalar_t, int VEC>
__global__ void forward_kernel(const scalar_t* __restrict__ value, const int64_t* __restrict__ shapes,
                               const int64_t* __restrict__ starts, const at::opmath_type<scalar_t>* __restrict__ loc,
                               const at::opmath_type<scalar_t>* __restrict__ attn, scalar_t* __restrict__ out,
                               const Sizes n, const int tpg, const int slices) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t thread = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t groups = n.B * n.Q * n.H, points = n.L * n.P;
  // Lanes past the last group mirror it (valid reads, no writes): every lane must reach the shuffles.
  const bool active = thread / (tpg * slices) < groups;
  const int64_t group = active ? thread / (tpg * slices) : groups - 1;
  const int slice = thread % (tpg * slices) / tpg, lane = thread % tpg;
  const int64_t h = group % n.H, b = group / (n.Q * n.H), row = n.H * n.D;
  const acc_t* loc_g = loc + group * points * 2;
  const acc_t* attn_g = attn + group * points;
  const scalar_t* value_bh = value + b * n.S * row + h * n.D;
  for (int64_t base = 0; base < n.D; base += tpg * VEC) {  // the same trip count in every lane of the warp
    const int64_t c0 = base + lane * VEC;
    const bool has_channels = c0 < n.D;
    acc_t acc[VEC];
#pragma unroll
    for (int k = 0; k < VEC; ++k) acc[k] = 0;
    for (int64_t i = slice; has_channels && i < points; i += slices) {
      const int64_t l = i / n.P, height = shapes[2 * l], width = shapes[2 * l + 1];
      Footprint<acc_t> f;
      if (!bilinear_footprint(loc_g[2 * i], loc_g[2 * i + 1], height, width, f)) continue;
      const scalar_t* value_l = value_bh + starts[l] * row + c0;
      const acc_t a = attn_g[i];
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        if (f.pixel[c] < 0) continue;
        const auto v = *reinterpret_cast<const Vec<scalar_t, VEC>*>(value_l + f.pixel[c] * row);
        const acc_t w = a * f.weight[c];
#pragma unroll
        for (int k = 0; k < VEC; ++k) acc[k] += w * static_cast<acc_t>(v.v[k]);
      }
    }
    for (int offset = tpg * slices / 2; offset >= tpg; offset /= 2) {
#pragma unroll
      for (int k = 0; k < VEC; ++k) acc[k] += __shfl_xor_sync(0xffffffffu, acc[k], offset);
    }
    if (active && has_channels && slice == 0) {
      Vec<scalar_t, VEC> o;
#pragma unroll
      for (int k = 0; k < VEC; ++k) o.v[k] = static_cast<scalar_t>(acc[k]);
      *reinterpret_cast<Vec<scalar_t, VEC>*>(out + group * n.D + c0) = o;
    }
  }
}

template <typename scalar_t, int VEC>
__global__ void backward_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ value,
                                const int64_t* __restrict__ shapes, const int64_t* __restrict__ starts,
                                const at::opmath_type<scalar_t>* __restrict__ loc,
                                const at::opmath_type<scalar_t>* __restrict__ attn,
                                at::opmath_type<scalar_t>* __restrict__ grad_value,
                                at::opmath_type<scalar_t>* __restrict__ grad_loc,
                                at::opmath_type<scalar_t>* __restrict__ grad_attn, const Sizes n, const int tpg) {
  using acc_t = at::opmath_type<scalar_t>;
  // Here a group of lanes handles one sampling point (b, q, h, l, p), not a whole (b, q, h): the points are
  // independent in the backward pass, and 16x more groups hide the latency of the gathers and atomics.
  const int64_t thread = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t points = n.L * n.P, total = n.B * n.Q * n.H * points;
  // Lanes past the last point mirror it (valid reads, no writes): every lane must reach the shuffles.
  const bool active = thread / tpg < total;
  const int64_t point = active ? thread / tpg : total - 1;  // = group * points + i
  const int lane = thread % tpg;
  const int64_t group = point / points, i = point % points, l = i / n.P;
  const int64_t h = group % n.H, b = group / (n.Q * n.H), row = n.H * n.D;
  const int64_t height = shapes[2 * l], width = shapes[2 * l + 1];
  const scalar_t* value_l = value + b * n.S * row + starts[l] * row + h * n.D;
  acc_t* grad_value_l = grad_value + b * n.S * row + starts[l] * row + h * n.D;
  const scalar_t* grad_out_g = grad_out + group * n.D;
  const acc_t a = attn[point];
  Footprint<acc_t> f;
  acc_t part_attn = 0, part_x = 0, part_y = 0;  // this lane's share of the three reductions over D
  if (bilinear_footprint(loc[2 * point], loc[2 * point + 1], height, width, f)) {
    for (int64_t c0 = lane * VEC; c0 < n.D; c0 += tpg * VEC) {
      const auto g = *reinterpret_cast<const Vec<scalar_t, VEC>*>(grad_out_g + c0);
      acc_t dots[4] = {0, 0, 0, 0};
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        if (f.pixel[c] < 0) continue;
        const int64_t offset = f.pixel[c] * row + c0;
        const auto v = *reinterpret_cast<const Vec<scalar_t, VEC>*>(value_l + offset);
        const acc_t w = a * f.weight[c];
        acc_t update[VEC];
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
          const acc_t gk = static_cast<acc_t>(g.v[k]);
          dots[c] += gk * static_cast<acc_t>(v.v[k]);
          update[k] = w * gk;
        }
        if (active) atomic_add<acc_t, VEC>(grad_value_l + offset, update);
      }
      acc_t dx, dy;
      footprint_grad(f, dots, dx, dy);
      part_attn += f.weight[0] * dots[0] + f.weight[1] * dots[1] + f.weight[2] * dots[2] + f.weight[3] * dots[3];
      part_x += dx;
      part_y += dy;
    }
    part_x *= a * static_cast<acc_t>(width);
    part_y *= a * static_cast<acc_t>(height);
  }
  for (int offset = tpg / 2; offset > 0; offset /= 2) {
    part_attn += __shfl_xor_sync(0xffffffffu, part_attn, offset);
    part_x += __shfl_xor_sync(0xffffffffu, part_x, offset);
    part_y += __shfl_xor_sync(0xffffffffu, part_y, offset);
  }
  if (active && lane == 0) {
    grad_attn[point] = part_attn;
    grad_loc[2 * point] = part_x;
    grad_loc[2 * point + 1] = part_y;
  }
}

// Widest vector (<= 16 bytes, <= max_vec elements) that divides D and keeps every access aligned.
template <typename scalar_t>
int pick_vec(int64_t D, std::initializer_list<const void*> pointers, int max_vec = 16) {
  for (int vec = std::min(16 / static_cast<int>(sizeof(scalar_t)), max_vec); vec > 1; vec /= 2) {
    bool ok = D % vec == 0;
    for (const void* p : pointers) ok = ok && reinterpret_cast<uintptr_t>(p) % (vec * sizeof(scalar_t)) == 0;
    if (ok) return vec;
  }
  return 1;
}

// Channels per lane in the backward: no more than one atomic instruction on grad_value covers (a float4 on
// sm_90+, else one element), so that each atomic instruction of a point's lanes covers whole 32-byte L2 sectors.
// Wider lanes make each instruction stride: 16-byte half loads with two float4 atomics per lane would touch every
// sector twice, half-used each time, and L2 atomic throughput counts sectors.
template <typename acc_t>
int atomic_vec(const at::Tensor& on) {
  const bool vector_atomics = std::is_same_v<acc_t, float> && at::cuda::getDeviceProperties(on.get_device())->major >= 9;
  return vector_atomics ? 4 : 1;
}

int lanes_per_group(int64_t D, int vec) {
  const int64_t needed = (D + vec - 1) / vec;
  int tpg = 1;
  while (tpg < needed && tpg < 32) tpg *= 2;
  return tpg;
}

// Calls f(std::integral_constant<int, VEC>) for the runtime vec in {1, 2, 4, 8}.
template <typename F>
void dispatch_vec(int vec, F&& f) {
  switch (vec) {
    case 8: f(std::integral_constant<int, 8>{}); break;
    case 4: f(std::integral_constant<int, 4>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    default: f(std::integral_constant<int, 1>{});
  }
}

int64_t blocks_for(int64_t threads) { return (threads + kBlock - 1) / kBlock; }

at::Tensor forward_cuda(const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
                        const at::Tensor& sampling_locations, const at::Tensor& attention_weights) {
  const Sizes n = check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  const c10::cuda::CUDAGuard guard(value.device());
  auto out = at::empty({n.B, n.Q, n.H * n.D}, value.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "msda_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int vec = pick_vec<scalar_t>(n.D, {value.data_ptr(), out.data_ptr()});
    const int tpg = lanes_per_group(n.D, vec);
    int slices = 1;  // fill the warp, with no more slices than points
    while (tpg * slices * 2 <= 32 && slices * 2 <= n.L * n.P) slices *= 2;
    dispatch_vec(vec, [&](auto VEC) {
      forward_kernel<scalar_t, decltype(VEC)::value>
          <<<blocks_for(n.B * n.Q * n.H * tpg * slices), kBlock, 0, at::cuda::getCurrentCUDAStream()>>>(
              value.data_ptr<scalar_t>(), spatial_shapes.data_ptr<int64_t>(), level_start_index.data_ptr<int64_t>(),
              sampling_locations.data_ptr<acc_t>(), attention_weights.data_ptr<acc_t>(), out.data_ptr<scalar_t>(), n,
              tpg, slices);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cuda(const at::Tensor& grad_output, const at::Tensor& value,
                                                             const at::Tensor& spatial_shapes,
                                                             const at::Tensor& level_start_index,
                                                             const at::Tensor& sampling_locations,
                                                             const at::Tensor& attention_weights) {
  const Sizes n = check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  check_grad_output(grad_output, value, n);
  const c10::cuda::CUDAGuard guard(value.device());
  auto grad_value = at::zeros(value.sizes(), value.options().dtype(sampling_locations.scalar_type()));
  auto grad_loc = at::zeros_like(sampling_locations);
  auto grad_attn = at::zeros_like(attention_weights);
  if (n.B * n.Q * n.H > 0 && n.D > 0 && n.L * n.P > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "msda_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const int vec = pick_vec<scalar_t>(n.D, {value.data_ptr(), grad_output.data_ptr()}, atomic_vec<acc_t>(value));
      const int tpg = lanes_per_group(n.D, vec);
      dispatch_vec(vec, [&](auto VEC) {
        backward_kernel<scalar_t, decltype(VEC)::value>
            <<<blocks_for(n.B * n.Q * n.H * n.L * n.P * tpg), kBlock, 0, at::cuda::getCurrentCUDAStream()>>>(
                grad_output.data_ptr<scalar_t>(), value.data_ptr<scalar_t>(), spatial_shapes.data_ptr<int64_t>(),
                level_start_index.data_ptr<int64_t>(), sampling_locations.data_ptr<acc_t>(),
                attention_weights.data_ptr<acc_t>(), grad_value.data_ptr<acc_t>(), grad_loc.data_ptr<acc_t>(),
                grad_attn.data_ptr<acc_t>(), n, tpg);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }
  return {grad_value.to(value.scalar_type()), grad_loc, grad_attn};
}

}  // namespace
}  // namespace msda

TORCH_LIBRARY(detrkit_msda_cuda, m) {
  m.def("forward(Tensor value, Tensor spatial_shapes, Tensor level_start_index, Tensor sampling_locations, "
        "Tensor attention_weights) -> Tensor");
  m.def("backward(Tensor grad_output, Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
        "Tensor sampling_locations, Tensor attention_weights) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(detrkit_msda_cuda, CUDA, m) {
  m.impl("forward", &msda::forward_cuda);
  m.impl("backward", &msda::backward_cuda);
}
