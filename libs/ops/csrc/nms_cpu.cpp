// 1-D NMS, CPU kernel: the reference loops, one group after another (groups run in parallel
// through at::parallel_for; each group writes only its own output slots).
#include "nms.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace nms1d {

void check_inputs(const at::Tensor& segs, const at::Tensor& scores, const at::Tensor& offsets,
                  double sigma, int64_t method) {
  TORCH_CHECK(segs.dim() == 2 && segs.size(1) == 2, "nms_groups: segs must have shape (N, 2), got ",
              segs.sizes());
  TORCH_CHECK(scores.dim() == 1 && scores.size(0) == segs.size(0),
              "nms_groups: scores must have shape (N,) with N = ", segs.size(0), ", got ",
              scores.sizes());
  TORCH_CHECK(segs.scalar_type() == at::kFloat && scores.scalar_type() == at::kFloat,
              "nms_groups: segs and scores must be float32, got ", segs.scalar_type(), " and ",
              scores.scalar_type());
  TORCH_CHECK(offsets.dim() == 1 && offsets.size(0) >= 1 && offsets.scalar_type() == at::kLong,
              "nms_groups: offsets must be a non-empty 1-D int64 tensor (G + 1,), got ",
              offsets.sizes(), " ", offsets.scalar_type());
  TORCH_CHECK(segs.is_contiguous() && scores.is_contiguous() && offsets.is_contiguous(),
              "nms_groups: segs, scores and offsets must be contiguous");
  TORCH_CHECK(segs.device() == scores.device() && segs.device() == offsets.device(),
              "nms_groups: segs, scores and offsets must be on one device, got ", segs.device(),
              ", ", scores.device(), ", ", offsets.device());
  TORCH_CHECK(segs.size(0) < std::numeric_limits<int32_t>::max(),
              "nms_groups: at most 2^31 - 2 rows, got ", segs.size(0));
  TORCH_CHECK(method == kHard || method == kLinear || method == kGaussian,
              "nms_groups: method must be 0 (hard), 1 (linear) or 2 (Gaussian), got ", method);
  TORCH_CHECK(method != kGaussian || sigma > 0.0,
              "nms_groups: Gaussian soft-NMS needs sigma > 0, got ", sigma);
  if (offsets.device().is_cpu()) {
    const int64_t* off = offsets.data_ptr<int64_t>();
    const int64_t g = offsets.size(0) - 1;
    TORCH_CHECK(off[0] == 0 && off[g] == segs.size(0),
                "nms_groups: offsets must start at 0 and end at N = ", segs.size(0), ", got ",
                off[0], " and ", off[g]);
    for (int64_t k = 0; k < g; ++k) {
      TORCH_CHECK(off[k] <= off[k + 1], "nms_groups: offsets must be non-decreasing, offsets[",
                  k, "] = ", off[k], " > offsets[", k + 1, "] = ", off[k + 1]);
    }
  }
}

namespace {

struct Params {
  float iou_threshold;
  float min_score;
  float sigma;
  int64_t method;
  int64_t max_num;
};

inline float iou_1d(float ax1, float ax2, float aarea, float bx1, float bx2, float barea) {
  const float inter = std::max(0.f, std::min(ax2, bx2) - std::max(ax1, bx1));
  return inter / (aarea + barea - inter);
}

// Hard NMS on rows [start, end), already sorted by descending score. Returns the kept count.
int64_t hard_nms_group(const float* x1, const float* x2, const float* sc, int64_t start,
                       int64_t end, const Params& prm, int64_t* keep, float* out_scores) {
  const int64_t m = end - start;
  std::vector<float> area(m);
  std::vector<char> sel(m);
  for (int64_t k = 0; k < m; ++k) {
    area[k] = (x2[start + k] - x1[start + k]) + 1e-6f;
    sel[k] = !(prm.min_score > 0.f) || sc[start + k] > prm.min_score;
  }
  int64_t cnt = 0;
  for (int64_t i = 0; i < m; ++i) {
    if (!sel[i]) continue;
    if (prm.max_num > 0 && cnt >= prm.max_num) break;  // later picks cannot change earlier ones
    keep[start + cnt] = start + i;
    out_scores[start + cnt] = sc[start + i];
    ++cnt;
    const float ix1 = x1[start + i], ix2 = x2[start + i];
    for (int64_t j = i + 1; j < m; ++j) {
      if (!sel[j]) continue;
      if (iou_1d(ix1, ix2, area[i], x1[start + j], x2[start + j], area[j]) >= prm.iou_threshold) {
        sel[j] = 0;
      }
    }
  }
  return cnt;
}

// Soft-NMS on rows [start, end) in original order: the reference loop, swaps included.
int64_t soft_nms_group(const float* segs, const float* scores, int64_t start, int64_t end,
                       const Params& prm, int64_t* keep, float* out_scores) {
  int64_t n = end - start;
  std::vector<float> x1(n), x2(n), sc(n), area(n);
  std::vector<int64_t> ind(n);
  for (int64_t k = 0; k < n; ++k) {
    x1[k] = segs[2 * (start + k)];
    x2[k] = segs[2 * (start + k) + 1];
    sc[k] = scores[start + k];
    area[k] = (x2[k] - x1[k]) + 1e-6f;
    ind[k] = start + k;
  }
  int64_t i = 0;
  for (; i < n; ++i) {
    if (prm.max_num > 0 && i >= prm.max_num) break;  // picks are final: stop at the cap
    int64_t m = i;
    float best = sc[i];
    for (int64_t p = i + 1; p < n; ++p) {
      if (best < sc[p]) {
        best = sc[p];
        m = p;
      }
    }
    const float ix1 = x1[m], ix2 = x2[m], iarea = area[m];
    std::swap(x1[i], x1[m]);
    std::swap(x2[i], x2[m]);
    std::swap(sc[i], sc[m]);
    std::swap(area[i], area[m]);
    std::swap(ind[i], ind[m]);
    int64_t p = i + 1;
    while (p < n) {
      const float ovr = iou_1d(ix1, ix2, iarea, x1[p], x2[p], area[p]);
      float w = 1.f;
      if (prm.method == kLinear) {
        if (ovr >= prm.iou_threshold) w = 1.f - ovr;
      } else if (ovr != 0.f) {  // expf(-0 / sigma) is exactly 1: skip it for disjoint pairs
        w = std::exp(-(ovr * ovr) / prm.sigma);  // float overload: expf
      }
      sc[p] *= w;
      if (sc[p] < prm.min_score) {  // remove: copy the last row here and test it next
        x1[p] = x1[n - 1];
        x2[p] = x2[n - 1];
        sc[p] = sc[n - 1];
        area[p] = area[n - 1];
        ind[p] = ind[n - 1];
        --n;
        continue;
      }
      ++p;
    }
  }
  const int64_t cnt = std::min(i, n);
  for (int64_t k = 0; k < cnt; ++k) {
    keep[start + k] = ind[k];
    out_scores[start + k] = sc[k];
  }
  return cnt;
}

}  // namespace

std::vector<at::Tensor> nms_groups_cpu(const at::Tensor& segs, const at::Tensor& scores,
                                       const at::Tensor& offsets, double iou_threshold,
                                       double min_score, double sigma, int64_t method,
                                       int64_t max_num) {
  check_inputs(segs, scores, offsets, sigma, method);
  TORCH_CHECK(segs.device().is_cpu(), "nms_groups_cpu: tensors must be on CPU, got ",
              segs.device());
  const int64_t n = segs.size(0);
  const int64_t g = offsets.size(0) - 1;
  at::Tensor keep = at::full({n}, -1, segs.options().dtype(at::kLong));
  at::Tensor out_scores = at::zeros({n}, segs.options());
  at::Tensor counts = at::zeros({g}, segs.options().dtype(at::kLong));
  const Params prm{static_cast<float>(iou_threshold), static_cast<float>(min_score),
                   static_cast<float>(sigma), method, max_num};
  const float* s = segs.data_ptr<float>();
  const float* sc = scores.data_ptr<float>();
  const int64_t* off = offsets.data_ptr<int64_t>();
  int64_t* kp = keep.data_ptr<int64_t>();
  float* os = out_scores.data_ptr<float>();
  int64_t* cn = counts.data_ptr<int64_t>();

  if (method == kHard) {
    // Hard NMS needs each group sorted by descending score (done by the caller, stably).
    for (int64_t k = 0; k < g; ++k) {
      for (int64_t r = off[k] + 1; r < off[k + 1]; ++r) {
        TORCH_CHECK(!(sc[r - 1] < sc[r]),
                    "nms_groups_cpu: hard NMS needs each group sorted by descending score; group ",
                    k, " is not at row ", r);
      }
    }
    at::Tensor x1 = segs.select(1, 0).contiguous();
    at::Tensor x2 = segs.select(1, 1).contiguous();
    const float* px1 = x1.data_ptr<float>();
    const float* px2 = x2.data_ptr<float>();
    at::parallel_for(0, g, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t k = lo; k < hi; ++k) {
        cn[k] = hard_nms_group(px1, px2, sc, off[k], off[k + 1], prm, kp, os);
      }
    });
  } else {
    at::parallel_for(0, g, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t k = lo; k < hi; ++k) {
        cn[k] = soft_nms_group(s, sc, off[k], off[k + 1], prm, kp, os);
      }
    });
  }
  return {keep, out_scores, counts};
}

}  // namespace nms1d
