// 1-D NMS over contiguous groups: declarations and the device dispatcher.
//
// One call runs NMS independently on G groups (a group = one class of one video, or one whole
// video for class-agnostic NMS). The rows of group g are rows [offsets[g], offsets[g + 1]) of
// `segs` / `scores`. Algorithms (reference: ActionFormer csrc/nms_cpu.cpp, see
// docs/numerics.md s.7.2), all in float32:
//   method 0  hard NMS. Rows of each group must already be sorted by descending score (stable
//             sort: ties keep their original order). Rows with score <= min_score are dropped
//             first when min_score > 0; greedy pass; a kept row suppresses every later row with
//             IoU >= iou_threshold. Scores are unchanged.
//   method 1  linear soft-NMS   (w = 1 - IoU when IoU >= iou_threshold, else 1)
//   method 2  Gaussian soft-NMS (w = expf(-IoU^2 / sigma), iou_threshold unused)
//             Rows in original order; the reference's literal loop: pick the max score (strict
//             `<` scan, earliest current position wins), swap it into slot i, decay the rest,
//             remove a row whose score < min_score by copying the last row into its slot.
// IoU = inter / (len_i + len_j - inter) with len = x2 - x1 + 1e-6.
// Each group keeps at most max_num rows (max_num <= 0: no cap), in pick order.
//
// Returns {keep (N,) int64, out_scores (N,) float32, counts (G,) int64}: group g's results are
// keep[offsets[g] + t] (a row index into segs) and out_scores[offsets[g] + t] (its final score)
// for t < counts[g]; other slots hold -1 / 0.
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace nms1d {

constexpr int64_t kHard = 0;
constexpr int64_t kLinear = 1;
constexpr int64_t kGaussian = 2;

// Checks shapes, dtypes and devices of the inputs; shared by both kernels.
void check_inputs(const at::Tensor& segs, const at::Tensor& scores, const at::Tensor& offsets,
                  double sigma, int64_t method);

std::vector<at::Tensor> nms_groups_cpu(const at::Tensor& segs, const at::Tensor& scores,
                                       const at::Tensor& offsets, double iou_threshold,
                                       double min_score, double sigma, int64_t method,
                                       int64_t max_num);

#ifdef WITH_CUDA
std::vector<at::Tensor> nms_groups_cuda(const at::Tensor& segs, const at::Tensor& scores,
                                        const at::Tensor& offsets, double iou_threshold,
                                        double min_score, double sigma, int64_t method,
                                        int64_t max_num);
#endif

inline bool built_with_cuda() {
#ifdef WITH_CUDA
  return true;
#else
  return false;
#endif
}

// Device dispatcher: CPU tensors -> nms_groups_cpu, CUDA tensors -> nms_groups_cuda.
inline std::vector<at::Tensor> nms_groups(const at::Tensor& segs, const at::Tensor& scores,
                                          const at::Tensor& offsets, double iou_threshold,
                                          double min_score, double sigma, int64_t method,
                                          int64_t max_num) {
  check_inputs(segs, scores, offsets, sigma, method);
  if (segs.is_cuda()) {
#ifdef WITH_CUDA
    return nms_groups_cuda(segs, scores, offsets, iou_threshold, min_score, sigma, method,
                           max_num);
#else
    TORCH_CHECK(false,
                "nms_groups: got CUDA tensors, but the NMS extension was built without CUDA "
                "(no CUDA toolkit found at build time); rebuild on a machine with nvcc: "
                "python setup.py build_ext --inplace");
#endif
  }
  TORCH_CHECK(segs.device().is_cpu(), "nms_groups: tensors must be on CPU or CUDA, got ",
              segs.device());
  return nms_groups_cpu(segs, scores, offsets, iou_threshold, min_score, sigma, method, max_num);
}

}  // namespace nms1d
