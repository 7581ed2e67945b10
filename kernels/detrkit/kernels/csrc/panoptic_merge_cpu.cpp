// Panoptic merge on CPU: the per-pixel argmax over kept queries of score_k * bilinear_up(prob_k), and the two
// areas per query that the overlap test needs, without materialising the (K, H, W) upsampled tensor.
//
// The upsampled values must be bit-equal to F.interpolate(mode="bilinear", align_corners=False) on this torch,
// or a pixel whose two best queries are within one rounding of each other could go to the other query. ATen's
// CPU kernel for NCHW float inputs is separable: taps and lambdas per output coordinate
// (HelperInterpLinear::compute_indices_weights), then a pass along the width into a (K, h, W) buffer, then a
// pass along the height, each value `t0 * w0 + t1 * w1`. Whether the compiler contracted those expressions (and
// the source-index one) into fused multiply-adds depends on the CPU capability ATen dispatches to, so it is a
// run-time argument here; the Python side finds which one this torch uses by comparing on a probe. This file is
// compiled with -ffp-contract=off so that nothing else is contracted behind our back.
//
// Layout: each thread owns a contiguous block of output rows and keeps the two source rows it currently needs,
// width-interpolated, for every query (2 x K x W floats). The output rows that share those two source rows (about
// four at DETR's 4x) are updated together, tile of columns by tile, so that each query's source values are read
// once per group and the group's running maxima and winners stay in L1. Areas are counted per thread and summed
// at the end. With AVX-512 the two inner loops are written with intrinsics; elsewhere plain C++ does the same.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif
#if defined(__AVX2__) && defined(__FMA__) && !defined(__AVX512F__)
#define PANOPTIC_AVX2 1
#endif

#include <algorithm>
#include <cmath>
#include <cstring>
#include <mutex>
#include <tuple>
#include <vector>

namespace panoptic {
namespace {

// ATen's `t0 * w0 + t1 * w1`, contracted as the AVX2 / AVX-512 builds contract it or not at all.
template <bool kFma>
inline float combine(float t0, float w0, float t1, float w1) {
  if constexpr (kFma) {
    return std::fma(t0, w0, t1 * w1);
  } else {
    return t0 * w0 + t1 * w1;
  }
}

// Floats per vector register: the block of the width pass's permute path and the step of the row update.
#ifdef PANOPTIC_AVX2
constexpr int64_t kLanes = 8;
#else
constexpr int64_t kLanes = 16;
#endif

// Source taps and lambdas of every output coordinate along one dimension (align_corners=False).
struct Taps {
  bool identity;  // same size: ATen copies instead of interpolating
  std::vector<int64_t> i0, i1;
  std::vector<float> l0, l1;
  // Per block of kLanes outputs: the first source index, and whether both taps of all its outputs lie within
  // kLanes sources from it (then one load and two in-register permutes replace two gathers).
  std::vector<int64_t> block_base;
  std::vector<bool> block_fits;
  std::vector<int32_t> r0, r1;  // taps relative to their block's base
};

void add_blocks(Taps& taps) {
  const int64_t n = static_cast<int64_t>(taps.i0.size());
  for (int64_t start = 0; start < n; start += kLanes) {
    const int64_t base = taps.i0[start];
    bool fits = true;
    for (int64_t x = start; x < std::min(start + kLanes, n); ++x) {
      fits = fits && taps.i1[x] - base < kLanes;
      taps.r0.push_back(static_cast<int32_t>(std::min<int64_t>(taps.i0[x] - base, kLanes - 1)));
      taps.r1.push_back(static_cast<int32_t>(std::min<int64_t>(taps.i1[x] - base, kLanes - 1)));
    }
    taps.block_base.push_back(base);
    taps.block_fits.push_back(fits);
  }
}

Taps linear_taps(int64_t input_size, int64_t output_size, bool fma) {
  Taps taps{input_size == output_size, std::vector<int64_t>(output_size), std::vector<int64_t>(output_size),
            std::vector<float>(output_size), std::vector<float>(output_size)};
  // area_pixel_compute_scale: float(in) / out, in the op's math type (float for float inputs).
  const float scale = static_cast<float>(input_size) / static_cast<float>(output_size);
  for (int64_t i = 0; i < output_size; ++i) {
    if (taps.identity) {
      taps.i0[i] = taps.i1[i] = i;
      taps.l0[i] = 1.f;
      taps.l1[i] = 0.f;
      continue;
    }
    // area_pixel_compute_source_index: scale * (dst + 0.5) - 0.5, clamped at 0 (not cubic).
    const float dst = static_cast<float>(i) + 0.5f;
    float source = fma ? std::fma(scale, dst, -0.5f) : scale * dst - 0.5f;
    source = source < 0.f ? 0.f : source;
    // guard_index_and_lambda, then the second tap one further unless at the border.
    const int64_t i0 = std::min(static_cast<int64_t>(std::floor(source)), input_size - 1);
    const float l1 = std::min(std::max(source - static_cast<float>(i0), 0.f), 1.f);
    taps.i0[i] = i0;
    taps.i1[i] = i0 + (i0 < input_size - 1 ? 1 : 0);
    taps.l0[i] = 1.f - l1;
    taps.l1[i] = l1;
  }
  add_blocks(taps);
  return taps;
}

// Outputs [start, end) of the width pass, two scalar loads per output (compilers turn them into gathers).
template <bool kFma>
inline void width_pass_gather(const float* __restrict source, const Taps& taps, int64_t start, int64_t end,
                              float* __restrict row) {
  const int64_t* __restrict i0 = taps.i0.data();
  const int64_t* __restrict i1 = taps.i1.data();
  const float* __restrict l0 = taps.l0.data();
  const float* __restrict l1 = taps.l1.data();
  for (int64_t x = start; x < end; ++x) row[x] = combine<kFma>(source[i0[x]], l0[x], source[i1[x]], l1[x]);
}

// One source row (w,) interpolated along the width into (W,). Returns whether a NaN came out.
template <bool kFma>
bool width_pass(const float* __restrict source, int64_t in_width, const Taps& taps, int64_t out_width,
                float* __restrict row) {
  if (taps.identity) {
    std::memcpy(row, source, out_width * sizeof(float));
  } else {
#ifdef __AVX512F__
    // Upsampling reads few distinct sources per block of outputs: load them once (masked at the row's end) and
    // pick both taps with permutes. Same products and sums as the scalar code, so the same rounding.
    for (int64_t block = 0, start = 0; start < out_width; ++block, start += kLanes) {
      const int64_t count = std::min(kLanes, out_width - start);
      if (!taps.block_fits[block] || count < kLanes) {
        width_pass_gather<kFma>(source, taps, start, start + count, row);
        continue;
      }
      const int64_t base = taps.block_base[block];
      const __mmask16 valid = static_cast<__mmask16>((1u << std::min(kLanes, in_width - base)) - 1u);
      const __m512 window = _mm512_maskz_loadu_ps(valid, source + base);
      const __m512 t0 = _mm512_permutexvar_ps(_mm512_loadu_si512(taps.r0.data() + start), window);
      const __m512 t1 = _mm512_permutexvar_ps(_mm512_loadu_si512(taps.r1.data() + start), window);
      const __m512 w0 = _mm512_loadu_ps(taps.l0.data() + start), w1 = _mm512_loadu_ps(taps.l1.data() + start);
      const __m512 p1 = _mm512_mul_ps(t1, w1);
      const __m512 value = kFma ? _mm512_fmadd_ps(t0, w0, p1) : _mm512_add_ps(_mm512_mul_ps(t0, w0), p1);
      _mm512_storeu_ps(row + start, value);
    }
#elif defined(PANOPTIC_AVX2)
    const __m256i lane_numbers = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int64_t block = 0, start = 0; start < out_width; ++block, start += kLanes) {
      const int64_t count = std::min(kLanes, out_width - start);
      if (!taps.block_fits[block] || count < kLanes) {
        width_pass_gather<kFma>(source, taps, start, start + count, row);
        continue;
      }
      const int64_t base = taps.block_base[block];
      const int32_t available = static_cast<int32_t>(std::min(kLanes, in_width - base));
      const __m256i valid = _mm256_cmpgt_epi32(_mm256_set1_epi32(available), lane_numbers);
      const __m256 window = _mm256_maskload_ps(source + base, valid);
      const __m256 t0 = _mm256_permutevar8x32_ps(
          window, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(taps.r0.data() + start)));
      const __m256 t1 = _mm256_permutevar8x32_ps(
          window, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(taps.r1.data() + start)));
      const __m256 w0 = _mm256_loadu_ps(taps.l0.data() + start), w1 = _mm256_loadu_ps(taps.l1.data() + start);
      const __m256 p1 = _mm256_mul_ps(t1, w1);
      const __m256 value = kFma ? _mm256_fmadd_ps(t0, w0, p1) : _mm256_add_ps(_mm256_mul_ps(t0, w0), p1);
      _mm256_storeu_ps(row + start, value);
    }
#else
    width_pass_gather<kFma>(source, taps, 0, out_width, row);
#endif
  }
  int nan = 0;
  for (int64_t x = 0; x < out_width; ++x) nan |= row[x] != row[x];
  return nan != 0;
}

struct Inputs {
  const float* probs;  // (K, h, w)
  const float* scores;  // (K,)
  int64_t K, h, w, H, W;
  float threshold;
  Taps rows, cols;
};

// The two width-interpolated source rows a thread holds, for all queries: slot s, query k -> K x W floats.
template <bool kFma>
class RowCache {
 public:
  explicit RowCache(const Inputs& in) : in_(in), data_(2 * in.K * in.W) {}

  // Rows of source row y for all queries (each W floats, query-major), keeping the slot that holds `keep`.
  const float* get(int64_t y, int64_t keep) {
    for (int s = 0; s < 2; ++s) {
      if (held_[s] == y) return slot(s);
    }
    const int s = held_[0] == keep ? 1 : 0;
    float* rows = slot(s);
    for (int64_t k = 0; k < in_.K; ++k) {
      nan_ |= width_pass<kFma>(in_.probs + (k * in_.h + y) * in_.w, in_.w, in_.cols, in_.W, rows + k * in_.W);
    }
    held_[s] = y;
    return rows;
  }
  bool saw_nan() const { return nan_; }

 private:
  float* slot(int s) { return data_.data() + s * in_.K * in_.W; }
  const Inputs& in_;
  std::vector<float> data_;
  int64_t held_[2] = {-1, -1};
  bool nan_ = false;
};

// update_row on pixels [start, n), one at a time.
template <bool kFma, bool kIdentity>
int64_t update_scalar(const float* __restrict r0, const float* __restrict r1, float m0, float m1, float score,
                      float threshold, int32_t query, float* __restrict best, int32_t* __restrict index,
                      int64_t start, int64_t n) {
  int64_t count = 0;
  for (int64_t x = start; x < n; ++x) {
    const float v = (kIdentity ? r0[x] : combine<kFma>(r0[x], m0, r1[x], m1)) * score;
    count += v >= threshold;
    if (query == 0 || v > best[x]) {
      best[x] = v;
      index[x] = query;
    }
  }
  return count;
}

// One query's weighted values on n pixels of one output row, merged into that row's best values and winners
// (strictly greater: the first query among equal values keeps the pixel, as torch.max(0) does). Returns how
// many of its values are >= threshold.
template <bool kFma, bool kIdentity>
int64_t update_row(const float* __restrict r0, const float* __restrict r1, float m0, float m1, float score,
                   float threshold, int32_t query, float* __restrict best, int32_t* __restrict index, int64_t n) {
#ifdef __AVX512F__
  // Written out: compilers turn the conditional updates into a branch around masked stores, which mispredicts.
  const __m512 vm0 = _mm512_set1_ps(m0), vm1 = _mm512_set1_ps(m1), vscore = _mm512_set1_ps(score);
  const __m512 vthreshold = _mm512_set1_ps(threshold);
  const __m512i vquery = _mm512_set1_epi32(query), one = _mm512_set1_epi32(1);
  __m512i counts = _mm512_setzero_si512();
  for (int64_t x = 0; x < n; x += kLanes) {
    const __mmask16 lanes = n - x >= kLanes ? static_cast<__mmask16>(0xFFFF)
                                            : static_cast<__mmask16>((1u << (n - x)) - 1u);
    const __m512 t0 = _mm512_maskz_loadu_ps(lanes, r0 + x);
    __m512 up = t0;
    if constexpr (!kIdentity) {
      const __m512 p1 = _mm512_mul_ps(_mm512_maskz_loadu_ps(lanes, r1 + x), vm1);
      up = kFma ? _mm512_fmadd_ps(t0, vm0, p1) : _mm512_add_ps(_mm512_mul_ps(t0, vm0), p1);
    }
    const __m512 v = _mm512_mul_ps(up, vscore);
    counts = _mm512_mask_add_epi32(counts, _mm512_mask_cmp_ps_mask(lanes, v, vthreshold, _CMP_GE_OQ), counts, one);
    const __mmask16 better = query == 0 ? lanes
                                        : _mm512_mask_cmp_ps_mask(lanes, v, _mm512_loadu_ps(best + x), _CMP_GT_OQ);
    _mm512_mask_storeu_ps(best + x, better, v);
    _mm512_mask_storeu_epi32(index + x, better, vquery);
  }
  return _mm512_reduce_add_epi32(counts);
#elif defined(PANOPTIC_AVX2)
  const __m256 vm0 = _mm256_set1_ps(m0), vm1 = _mm256_set1_ps(m1), vscore = _mm256_set1_ps(score);
  const __m256 vthreshold = _mm256_set1_ps(threshold), vquery = _mm256_castsi256_ps(_mm256_set1_epi32(query));
  __m256i counts = _mm256_setzero_si256();
  int64_t x = 0;
  for (; x + kLanes <= n; x += kLanes) {
    const __m256 t0 = _mm256_loadu_ps(r0 + x);
    __m256 up = t0;
    if constexpr (!kIdentity) {
      const __m256 p1 = _mm256_mul_ps(_mm256_loadu_ps(r1 + x), vm1);
      up = kFma ? _mm256_fmadd_ps(t0, vm0, p1) : _mm256_add_ps(_mm256_mul_ps(t0, vm0), p1);
    }
    const __m256 v = _mm256_mul_ps(up, vscore);
    // A true comparison is all ones, -1 as an integer.
    counts = _mm256_sub_epi32(counts, _mm256_castps_si256(_mm256_cmp_ps(v, vthreshold, _CMP_GE_OQ)));
    const __m256 old_best = _mm256_loadu_ps(best + x);
    const __m256 better = query == 0 ? _mm256_castsi256_ps(_mm256_set1_epi32(-1))
                                     : _mm256_cmp_ps(v, old_best, _CMP_GT_OQ);
    float* winners = reinterpret_cast<float*>(index + x);  // blended as raw 32-bit lanes
    _mm256_storeu_ps(best + x, _mm256_blendv_ps(old_best, v, better));
    _mm256_storeu_ps(winners, _mm256_blendv_ps(_mm256_loadu_ps(winners), vquery, better));
  }
  alignas(32) int32_t lanes[kLanes];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), counts);
  int64_t count = 0;
  for (int32_t lane : lanes) count += lane;
  return count + update_scalar<kFma, kIdentity>(r0, r1, m0, m1, score, threshold, query, best, index, x, n);
#else
  return update_scalar<kFma, kIdentity>(r0, r1, m0, m1, score, threshold, query, best, index, 0, n);
#endif
}

constexpr int64_t kTile = 512;  // columns per pass: a group's best values and winners stay in L1
constexpr int64_t kGroup = 4;  // output rows that share their two source rows, updated per load of those rows

// Output rows [begin, end): winner per pixel, and per query the pixels won and the pixels >= threshold.
template <bool kFma>
bool merge_rows(const Inputs& in, int64_t begin, int64_t end, int32_t* winner, int64_t* won, int64_t* own) {
  RowCache<kFma> cache(in);
  const int64_t W = in.W;
  const Taps& taps = in.rows;
  const auto update = taps.identity ? update_row<kFma, true> : update_row<kFma, false>;
  std::vector<float> best(kGroup * kTile);
  for (int64_t y = begin; y < end;) {
    const int64_t y0 = taps.i0[y], y1 = taps.i1[y];
    int64_t group = 1;
    while (group < kGroup && y + group < end && taps.i0[y + group] == y0 && taps.i1[y + group] == y1) ++group;
    const float* rows0 = cache.get(y0, y1);
    const float* rows1 = cache.get(y1, y0);
    for (int64_t x0 = 0; x0 < W; x0 += kTile) {
      const int64_t n = std::min(kTile, W - x0);
      for (int64_t k = 0; k < in.K; ++k) {
        int64_t count = 0;
        for (int64_t j = 0; j < group; ++j) {
          count += update(rows0 + k * W + x0, rows1 + k * W + x0, taps.l0[y + j], taps.l1[y + j], in.scores[k],
                          in.threshold, static_cast<int32_t>(k), best.data() + j * kTile, winner + (y + j) * W + x0,
                          n);
        }
        own[k] += count;
      }
    }
    for (int64_t x = y * W; x < (y + group) * W; ++x) ++won[winner[x]];
    y += group;
  }
  return cache.saw_nan();
}

void check_inputs(const at::Tensor& probs, int64_t height, int64_t width) {
  TORCH_CHECK(probs.device().is_cpu() && probs.scalar_type() == at::kFloat && probs.dim() == 3,
              "mask_probs must be a CPU float32 tensor (K, h, w), got ", probs.scalar_type(), " ", probs.sizes(),
              " on ", probs.device());
  TORCH_CHECK(probs.size(0) > 0 && probs.size(1) > 0 && probs.size(2) > 0, "mask_probs must not be empty, got ",
              probs.sizes());
  TORCH_CHECK(height > 0 && width > 0, "target size must be positive, got (", height, ", ", width, ")");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, bool> merge(const at::Tensor& mask_probs, const at::Tensor& scores,
                                                           int64_t height, int64_t width, double mask_threshold,
                                                           bool fused_multiply_add) {
  check_inputs(mask_probs, height, width);
  const int64_t K = mask_probs.size(0);
  TORCH_CHECK(scores.device().is_cpu() && scores.scalar_type() == at::kFloat && scores.dim() == 1 &&
                  scores.size(0) == K,
              "scores must be a CPU float32 tensor (K,) with K = ", K, ", got ", scores.scalar_type(), " ",
              scores.sizes());
  TORCH_CHECK(K <= INT32_MAX, "too many queries: ", K);
  const at::Tensor probs = mask_probs.contiguous(), score = scores.contiguous();
  const int64_t h = probs.size(1), w = probs.size(2);
  // torch compares a float32 tensor with a Python float in float32.
  const Inputs in{probs.data_ptr<float>(), score.data_ptr<float>(), K, h, w, height, width,
                  static_cast<float>(mask_threshold), linear_taps(h, height, fused_multiply_add),
                  linear_taps(w, width, fused_multiply_add)};

  at::Tensor winner = at::empty({height, width}, probs.options().dtype(at::kInt));
  at::Tensor won = at::zeros({K}, probs.options().dtype(at::kLong));
  at::Tensor own = at::zeros({K}, probs.options().dtype(at::kLong));
  int32_t* winner_data = winner.data_ptr<int32_t>();
  int64_t* won_total = won.data_ptr<int64_t>();
  int64_t* own_total = own.data_ptr<int64_t>();
  std::mutex mutex;
  bool nan = false;
  // Blocks of at least 16 rows: a block recomputes up to two source rows its neighbour also computed.
  at::parallel_for(0, height, 16, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> won_local(K, 0), own_local(K, 0);
    const bool block_nan = fused_multiply_add
                               ? merge_rows<true>(in, begin, end, winner_data, won_local.data(), own_local.data())
                               : merge_rows<false>(in, begin, end, winner_data, won_local.data(), own_local.data());
    std::lock_guard<std::mutex> lock(mutex);
    nan |= block_nan;
    for (int64_t k = 0; k < K; ++k) {
      won_total[k] += won_local[k];
      own_total[k] += own_local[k];
    }
  });
  return {winner, won, own, nan};
}

// The upsampled maps themselves (K, H, W), from the same taps, width pass and row update as `merge`: for tests
// against F.interpolate, not for speed.
at::Tensor upsample_bilinear(const at::Tensor& mask_probs, int64_t height, int64_t width, bool fused_multiply_add) {
  check_inputs(mask_probs, height, width);
  const at::Tensor probs = mask_probs.contiguous();
  const int64_t K = probs.size(0), h = probs.size(1), w = probs.size(2);
  const Taps rows = linear_taps(h, height, fused_multiply_add), cols = linear_taps(w, width, fused_multiply_add);
  at::Tensor output = at::empty({K, height, width}, probs.options());
  const float* source = probs.data_ptr<float>();
  float* out = output.data_ptr<float>();
  std::vector<float> r0(width), r1(width);
  std::vector<int32_t> index(width);
  for (int64_t k = 0; k < K; ++k) {
    for (int64_t y = 0; y < height; ++y) {
      const float* plane = source + k * h * w;
      if (fused_multiply_add) {
        width_pass<true>(plane + rows.i0[y] * w, w, cols, width, r0.data());
        width_pass<true>(plane + rows.i1[y] * w, w, cols, width, r1.data());
      } else {
        width_pass<false>(plane + rows.i0[y] * w, w, cols, width, r0.data());
        width_pass<false>(plane + rows.i1[y] * w, w, cols, width, r1.data());
      }
      // The merge's own row update with score 1 (exact) as query 0, which stores every value as the best.
      const auto update = fused_multiply_add ? (rows.identity ? update_row<true, true> : update_row<true, false>)
                                             : (rows.identity ? update_row<false, true> : update_row<false, false>);
      update(r0.data(), r1.data(), rows.l0[y], rows.l1[y], 1.f, 0.f, 0, out + (k * height + y) * width,
             index.data(), width);
    }
  }
  return output;
}

}  // namespace
}  // namespace panoptic

TORCH_LIBRARY(detrkit_panoptic_cpu, m) {
  m.def("merge(Tensor mask_probs, Tensor scores, int height, int width, float mask_threshold, "
        "bool fused_multiply_add) -> (Tensor, Tensor, Tensor, bool)");
  m.def("upsample_bilinear(Tensor mask_probs, int height, int width, bool fused_multiply_add) -> Tensor");
}

TORCH_LIBRARY_IMPL(detrkit_panoptic_cpu, CPU, m) {
  m.impl("merge", &panoptic::merge);
  m.impl("upsample_bilinear", &panoptic::upsample_bilinear);
}
