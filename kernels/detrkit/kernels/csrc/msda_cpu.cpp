// Multi-scale deformable attention on CPU: forward and backward.
//
// Every inner loop runs over the head dimension D, which is contiguous in value, output and grad_output,
// so the compiler vectorises it; head_dim 32 (the paper's 256 / 8) is also instantiated as a compile-time
// constant so those loops unroll into registers.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "msda_common.h"

namespace msda {
namespace {

// acc += sum_c w[c] * v_c over the head dimension (restrict parameters: no aliasing checks, one clean loop).
template <typename scalar_t, typename acc_t, int kD>
inline void blend_corners(acc_t* __restrict acc, const scalar_t* __restrict v0, const scalar_t* __restrict v1,
                          const scalar_t* __restrict v2, const scalar_t* __restrict v3, const acc_t w[4],
                          int64_t runtime_d) {
  const int64_t D = kD > 0 ? kD : runtime_d;
  const acc_t w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3];
  for (int64_t d = 0; d < D; ++d) {
    acc[d] += w0 * static_cast<acc_t>(v0[d]) + w1 * static_cast<acc_t>(v1[d]) + w2 * static_cast<acc_t>(v2[d]) +
              w3 * static_cast<acc_t>(v3[d]);
  }
}

// dots[c] = <g, v_c> and gv_c += w[c] * g for the four corners in one pass over the head dimension.
template <typename scalar_t, typename acc_t, int kD>
inline void corner_grads(const acc_t* __restrict g, const scalar_t* __restrict v0, const scalar_t* __restrict v1,
                         const scalar_t* __restrict v2, const scalar_t* __restrict v3, acc_t* __restrict gv0,
                         acc_t* __restrict gv1, acc_t* __restrict gv2, acc_t* __restrict gv3, const acc_t w[4],
                         acc_t dots[4], int64_t runtime_d) {
  const int64_t D = kD > 0 ? kD : runtime_d;
  const acc_t w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3];
  if constexpr (kD > 0 && kD % 16 == 0) {
    // Sixteen partial sums per corner, folded once at the end: four horizontal reductions per sampling point
    // were half of the backward's time.
    acc_t part[4][16] = {};
    for (int64_t base = 0; base < kD; base += 16) {
      for (int j = 0; j < 16; ++j) {
        const acc_t gd = g[base + j];
        part[0][j] += gd * static_cast<acc_t>(v0[base + j]);
        part[1][j] += gd * static_cast<acc_t>(v1[base + j]);
        part[2][j] += gd * static_cast<acc_t>(v2[base + j]);
        part[3][j] += gd * static_cast<acc_t>(v3[base + j]);
        gv0[base + j] += w0 * gd;
        gv1[base + j] += w1 * gd;
        gv2[base + j] += w2 * gd;
        gv3[base + j] += w3 * gd;
      }
    }
    for (int width = 8; width > 0; width /= 2) {
      for (int c = 0; c < 4; ++c) {
        for (int j = 0; j < width; ++j) part[c][j] += part[c][j + width];
      }
    }
    for (int c = 0; c < 4; ++c) dots[c] = part[c][0];
    return;
  }
  acc_t d0 = 0, d1 = 0, d2 = 0, d3 = 0;
  // omp simd: allows reassociating the four sums, so the dot products vectorise too.
#pragma omp simd reduction(+ : d0, d1, d2, d3)
  for (int64_t d = 0; d < D; ++d) {
    const acc_t gd = g[d];
    d0 += gd * static_cast<acc_t>(v0[d]);
    d1 += gd * static_cast<acc_t>(v1[d]);
    d2 += gd * static_cast<acc_t>(v2[d]);
    d3 += gd * static_cast<acc_t>(v3[d]);
    gv0[d] += w0 * gd;
    gv1[d] += w1 * gd;
    gv2[d] += w2 * gd;
    gv3[d] += w3 * gd;
  }
  dots[0] = d0, dots[1] = d1, dots[2] = d2, dots[3] = d3;
}

template <typename scalar_t, int kD>
void forward_impl(const scalar_t* value, const int64_t* shapes, const int64_t* starts,
                  const at::opmath_type<scalar_t>* loc, const at::opmath_type<scalar_t>* attn, scalar_t* out,
                  const Sizes n) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t D = kD > 0 ? kD : n.D, row = n.H * D, points = n.L * n.P;
  const std::vector<scalar_t> zeros(D, scalar_t(0));
  // One task = one (b, q) with all its heads; queries are independent, so no synchronisation.
  at::parallel_for(0, n.B * n.Q, 16, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc_buffer(D);
    acc_t* __restrict acc = acc_buffer.data();
    for (int64_t bq = begin; bq < end; ++bq) {
      const int64_t b = bq / n.Q;
      for (int64_t h = 0; h < n.H; ++h) {
        const int64_t group = bq * n.H + h;
        const acc_t* loc_g = loc + group * points * 2;
        const acc_t* attn_g = attn + group * points;
        const scalar_t* value_bh = value + b * n.S * row + h * D;
        for (int64_t d = 0; d < D; ++d) acc[d] = 0;
        for (int64_t l = 0; l < n.L; ++l) {
          const int64_t height = shapes[2 * l], width = shapes[2 * l + 1];
          const scalar_t* value_l = value_bh + starts[l] * row;
          for (int64_t p = 0; p < n.P; ++p) {
            const int64_t i = l * n.P + p;
            Footprint<acc_t> f;
            if (!bilinear_footprint(loc_g[2 * i], loc_g[2 * i + 1], height, width, f)) continue;
            const scalar_t* v[4];
            acc_t w[4];
            for (int c = 0; c < 4; ++c) {
              v[c] = f.pixel[c] >= 0 ? value_l + f.pixel[c] * row : zeros.data();
              w[c] = attn_g[i] * f.weight[c];
            }
            blend_corners<scalar_t, acc_t, kD>(acc, v[0], v[1], v[2], v[3], w, D);
          }
        }
        scalar_t* out_g = out + group * D;
        for (int64_t d = 0; d < D; ++d) out_g[d] = static_cast<scalar_t>(acc[d]);
      }
    }
  });
}

// grad_value is accumulated in acc_t. Each task owns one (chunk of queries, b, h): within a chunk it is the
// only writer of grad_value[b, :, h, :], so there are no races; chunks > 0 write into their own copy of
// grad_value (only when B * H alone cannot keep the threads busy), summed at the end.
template <typename scalar_t, int kD>
void backward_impl(const scalar_t* grad_out, const scalar_t* value, const int64_t* shapes, const int64_t* starts,
                   const at::opmath_type<scalar_t>* loc, const at::opmath_type<scalar_t>* attn,
                   at::opmath_type<scalar_t>* grad_value, int64_t chunk_stride, int64_t chunks,
                   at::opmath_type<scalar_t>* grad_loc, at::opmath_type<scalar_t>* grad_attn, const Sizes n) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t D = kD > 0 ? kD : n.D, row = n.H * D, points = n.L * n.P;
  const int64_t queries_per_chunk = (n.Q + chunks - 1) / chunks;
  const std::vector<scalar_t> zeros(D, scalar_t(0));
  at::parallel_for(0, chunks * n.B * n.H, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> g_buffer(D), scratch(4 * D);
    const acc_t* __restrict g = g_buffer.data();
    for (int64_t task = begin; task < end; ++task) {
      const int64_t chunk = task / (n.B * n.H), b = task / n.H % n.B, h = task % n.H;
      const scalar_t* value_bh = value + b * n.S * row + h * D;
      acc_t* grad_value_bh = grad_value + chunk * chunk_stride + b * n.S * row + h * D;
      const int64_t q_end = std::min(n.Q, (chunk + 1) * queries_per_chunk);
      for (int64_t q = chunk * queries_per_chunk; q < q_end; ++q) {
        const int64_t group = (b * n.Q + q) * n.H + h;
        const acc_t* loc_g = loc + group * points * 2;
        const acc_t* attn_g = attn + group * points;
        acc_t* grad_loc_g = grad_loc + group * points * 2;
        acc_t* grad_attn_g = grad_attn + group * points;
        for (int64_t d = 0; d < D; ++d) g_buffer[d] = static_cast<acc_t>(grad_out[group * D + d]);
        for (int64_t l = 0; l < n.L; ++l) {
          const int64_t height = shapes[2 * l], width = shapes[2 * l + 1];
          const int64_t level_offset = starts[l] * row;
          for (int64_t p = 0; p < n.P; ++p) {
            const int64_t i = l * n.P + p;
            Footprint<acc_t> f;
            if (!bilinear_footprint(loc_g[2 * i], loc_g[2 * i + 1], height, width, f)) {
              grad_attn_g[i] = grad_loc_g[2 * i] = grad_loc_g[2 * i + 1] = 0;
              continue;
            }
            const scalar_t* v[4];
            acc_t* gv[4];
            acc_t w[4], dots[4];  // dots[c] = <grad_out, v_c>, 0 for padded corners
            for (int c = 0; c < 4; ++c) {
              const bool inside = f.pixel[c] >= 0;
              v[c] = inside ? value_bh + level_offset + f.pixel[c] * row : zeros.data();
              gv[c] = inside ? grad_value_bh + level_offset + f.pixel[c] * row : scratch.data() + c * D;
              w[c] = attn_g[i] * f.weight[c];
            }
            corner_grads<scalar_t, acc_t, kD>(g, v[0], v[1], v[2], v[3], gv[0], gv[1], gv[2], gv[3], w, dots, D);
            acc_t dx, dy;
            footprint_grad(f, dots, dx, dy);
            grad_attn_g[i] = f.weight[0] * dots[0] + f.weight[1] * dots[1] + f.weight[2] * dots[2] + f.weight[3] * dots[3];
            grad_loc_g[2 * i] = attn_g[i] * static_cast<acc_t>(width) * dx;
            grad_loc_g[2 * i + 1] = attn_g[i] * static_cast<acc_t>(height) * dy;
          }
        }
      }
    }
  });
}

// Calls f.template operator()<kD>() with the head dimension as a compile-time constant when it is 32.
template <typename F>
void dispatch_head_dim(int64_t D, F&& f) {
  if (D == 32) {
    f(std::integral_constant<int, 32>{});
  } else {
    f(std::integral_constant<int, 0>{});
  }
}

at::Tensor forward_cpu(const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
                       const at::Tensor& sampling_locations, const at::Tensor& attention_weights) {
  const Sizes n = check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  auto out = at::empty({n.B, n.Q, n.H * n.D}, value.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "msda_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    dispatch_head_dim(n.D, [&](auto kD) {
      forward_impl<scalar_t, decltype(kD)::value>(
          value.data_ptr<scalar_t>(), spatial_shapes.data_ptr<int64_t>(), level_start_index.data_ptr<int64_t>(),
          sampling_locations.data_ptr<acc_t>(), attention_weights.data_ptr<acc_t>(), out.data_ptr<scalar_t>(), n);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cpu(const at::Tensor& grad_output, const at::Tensor& value,
                                                            const at::Tensor& spatial_shapes,
                                                            const at::Tensor& level_start_index,
                                                            const at::Tensor& sampling_locations,
                                                            const at::Tensor& attention_weights) {
  const Sizes n = check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  check_grad_output(grad_output, value, n);
  const auto opmath = sampling_locations.scalar_type();
  auto grad_loc = at::empty_like(sampling_locations);
  auto grad_attn = at::empty_like(attention_weights);
  // Split queries into chunks only when (b, h) tasks are fewer than threads; each extra chunk costs a copy.
  const int64_t bh = std::max<int64_t>(n.B * n.H, 1);
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>((at::get_num_threads() + bh - 1) / bh, n.Q));
  auto grad_value = at::zeros({chunks, n.B, n.S, n.H, n.D}, value.options().dtype(opmath));
  if (n.B * n.Q * n.H > 0 && n.D > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "msda_backward_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      dispatch_head_dim(n.D, [&](auto kD) {
        backward_impl<scalar_t, decltype(kD)::value>(
            grad_output.data_ptr<scalar_t>(), value.data_ptr<scalar_t>(), spatial_shapes.data_ptr<int64_t>(),
            level_start_index.data_ptr<int64_t>(), sampling_locations.data_ptr<acc_t>(),
            attention_weights.data_ptr<acc_t>(), grad_value.data_ptr<acc_t>(), grad_value.stride(0), chunks,
            grad_loc.data_ptr<acc_t>(), grad_attn.data_ptr<acc_t>(), n);
      });
    });
  } else {
    grad_loc.zero_();
    grad_attn.zero_();
  }
  auto grad_value_total = chunks == 1 ? grad_value.select(0, 0) : grad_value.sum(0);
  return {grad_value_total.to(value.scalar_type()), grad_loc, grad_attn};
}

}  // namespace
}  // namespace msda

TORCH_LIBRARY(detrkit_msda_cpu, m) {
  m.def("forward(Tensor value, Tensor spatial_shapes, Tensor level_start_index, Tensor sampling_locations, "
        "Tensor attention_weights) -> Tensor");
  m.def("backward(Tensor grad_output, Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
        "Tensor sampling_locations, Tensor attention_weights) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(detrkit_msda_cpu, CPU, m) {
  m.impl("forward", &msda::forward_cpu);
  m.impl("backward", &msda::backward_cpu);
}
