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

// acc[d] += w * v[d]
template <typename scalar_t, typename acc_t, int kD>
inline void axpy(acc_t* __restrict acc, const scalar_t* __restrict v, acc_t w, int64_t runtime_d) {
  const int64_t D = kD > 0 ? kD : runtime_d;
  for (int64_t d = 0; d < D; ++d) acc[d] += w * static_cast<acc_t>(v[d]);
}

template <typename scalar_t, int kD>
void forward_impl(const scalar_t* value, const int64_t* shapes, const int64_t* starts,
                  const at::opmath_type<scalar_t>* loc, const at::opmath_type<scalar_t>* attn, scalar_t* out,
                  const Sizes n) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t D = kD > 0 ? kD : n.D, row = n.H * D, points = n.L * n.P;
  // One task = one (b, q) with all its heads; queries are independent, so no synchronisation.
  at::parallel_for(0, n.B * n.Q, 16, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(D);
    for (int64_t bq = begin; bq < end; ++bq) {
      const int64_t b = bq / n.Q;
      for (int64_t h = 0; h < n.H; ++h) {
        const int64_t group = bq * n.H + h;
        const acc_t* loc_g = loc + group * points * 2;
        const acc_t* attn_g = attn + group * points;
        const scalar_t* value_bh = value + b * n.S * row + h * D;
        std::fill(acc.begin(), acc.end(), acc_t(0));
        for (int64_t l = 0; l < n.L; ++l) {
          const int64_t height = shapes[2 * l], width = shapes[2 * l + 1];
          const scalar_t* value_l = value_bh + starts[l] * row;
          for (int64_t p = 0; p < n.P; ++p) {
            const int64_t i = l * n.P + p;
            Footprint<acc_t> f;
            if (!bilinear_footprint(loc_g[2 * i], loc_g[2 * i + 1], height, width, f)) continue;
            for (int c = 0; c < 4; ++c) {
              if (f.pixel[c] >= 0) axpy<scalar_t, acc_t, kD>(acc.data(), value_l + f.pixel[c] * row, attn_g[i] * f.weight[c], D);
            }
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
  at::parallel_for(0, chunks * n.B * n.H, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> g(D);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t chunk = task / (n.B * n.H), b = task / n.H % n.B, h = task % n.H;
      const scalar_t* value_bh = value + b * n.S * row + h * D;
      acc_t* grad_value_bh = grad_value + chunk * chunk_stride + b * n.S * row + h * D;
      const int64_t q_end = std::min(n.Q, (chunk + 1) * queries_per_chunk);
      for (int64_t q = chunk * queries_per_chunk; q < q_end; ++q) {
        const int64_t group = (b * n.Q + q) * n.H + h;
        const acc_t* loc_g = loc + group * points * 2;
        const acc_t* attn_g = attn + group * points;
        for (int64_t d = 0; d < D; ++d) g[d] = static_cast<acc_t>(grad_out[group * D + d]);
        for (int64_t l = 0; l < n.L; ++l) {
          const int64_t height = shapes[2 * l], width = shapes[2 * l + 1];
          const int64_t level_offset = starts[l] * row;
          for (int64_t p = 0; p < n.P; ++p) {
            const int64_t i = l * n.P + p;
            Footprint<acc_t> f;
            acc_t dots[4] = {0, 0, 0, 0};  // <grad_out, v_corner>
            if (bilinear_footprint(loc_g[2 * i], loc_g[2 * i + 1], height, width, f)) {
              for (int c = 0; c < 4; ++c) {
                if (f.pixel[c] < 0) continue;
                const scalar_t* __restrict v = value_bh + level_offset + f.pixel[c] * row;
                acc_t* __restrict gv = grad_value_bh + level_offset + f.pixel[c] * row;
                const acc_t w = attn_g[i] * f.weight[c];
                acc_t dot = 0;
                for (int64_t d = 0; d < D; ++d) {
                  dot += g[d] * static_cast<acc_t>(v[d]);
                  gv[d] += w * g[d];
                }
                dots[c] = dot;
              }
              acc_t dx, dy;
              footprint_grad(f, dots, dx, dy);
              grad_attn[group * points + i] = f.weight[0] * dots[0] + f.weight[1] * dots[1] + f.weight[2] * dots[2] +
                                              f.weight[3] * dots[3];
              grad_loc[(group * points + i) * 2] = attn_g[i] * static_cast<acc_t>(width) * dx;
              grad_loc[(group * points + i) * 2 + 1] = attn_g[i] * static_cast<acc_t>(height) * dy;
            } else {
              grad_attn[group * points + i] = 0;
              grad_loc[(group * points + i) * 2] = 0;
              grad_loc[(group * points + i) * 2 + 1] = 0;
            }
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
  TORCH_CHECK(grad_output.is_contiguous() && grad_output.scalar_type() == value.scalar_type() &&
                  grad_output.sizes() == at::IntArrayRef({n.B, n.Q, n.H * n.D}),
              "msda: grad_output must be a contiguous (B, Q, H*D) tensor of value's dtype, got ", grad_output.sizes());
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
