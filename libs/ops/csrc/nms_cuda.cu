// 1-D NMS, CUDA kernel: all groups of a batch in ONE launch, one thread block per group.
//
// Each block runs its group's sequential NMS loop; inside one pick the block works in parallel:
//   soft-NMS: (1) argmax over the remaining rows (block reduction; ties -> lowest position, the
//             reference's strict `<` scan), (2) thread 0 swaps the pick into slot i, (3) every
//             remaining row is decayed and flagged alive (score >= min_score), (4) if rows died,
//             they are removed exactly as the reference's "copy the last row into slot p and
//             re-test it" loop would: with k survivors in [i+1, n), the dead slots of
//             [i+1, i+1+k) (ascending) receive the survivors of [i+1+k, n) in DEScending position
//             order, and n becomes i+1+k. (Each row is decayed once either way, so the survivor
//             set is the same; this closed form gives the same final positions, which matter for
//             later ties.)
//   hard NMS: rows pre-sorted by descending score; per kept row, the block suppresses the later
//             rows in parallel.
// Working arrays live in global memory (groups can exceed shared memory), one slice per group;
// they are written by one thread and read by others after __syncthreads (so no __restrict__).
#include "nms.h"

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include <climits>

namespace nms1d {
namespace {

constexpr int kThreads = 256;

struct Best {
  float score;
  int pos;  // INT_MAX: no candidate
};

// Higher score wins; equal scores -> lower position (the first one a `<` scan would keep).
struct BestOp {
  __device__ __forceinline__ Best operator()(const Best& a, const Best& b) const {
    if (a.pos == INT_MAX) return b;
    if (b.pos == INT_MAX) return a;
    if (a.score > b.score) return a;
    if (b.score > a.score) return b;
    return a.pos < b.pos ? a : b;
  }
};

__device__ __forceinline__ float iou_1d(float ax1, float ax2, float aarea, float bx1, float bx2,
                                        float barea) {
  const float inter = fmaxf(0.f, fminf(ax2, bx2) - fmaxf(ax1, bx1));
  return inter / (aarea + barea - inter);
}

__global__ void __launch_bounds__(kThreads)
    soft_nms_kernel(const float* __restrict__ segs, const float* __restrict__ scores,
                    const int64_t* __restrict__ offsets, float iou_threshold, float min_score,
                    float sigma, int method, int64_t max_num, float* wx1, float* wx2,
                    float* wsc, float* warea, int* wind, int* wflag, int* wslot,
                    int64_t* __restrict__ keep, float* __restrict__ out_scores,
                    int64_t* __restrict__ counts) {
  using ReduceBest = cub::BlockReduce<Best, kThreads>;
  using ReduceInt = cub::BlockReduce<int, kThreads>;
  using Scan = cub::BlockScan<int, kThreads>;
  __shared__ union {
    typename ReduceBest::TempStorage best;
    typename ReduceInt::TempStorage sum;
    typename Scan::TempStorage scan;
  } tmp;
  __shared__ int s_pick;
  __shared__ int s_alive;

  const int tid = threadIdx.x;
  const int64_t g = blockIdx.x;
  const int64_t start = offsets[g];
  int n = static_cast<int>(offsets[g + 1] - start);
  float* x1 = wx1 + start;
  float* x2 = wx2 + start;
  float* sc = wsc + start;
  float* area = warea + start;
  int* ind = wind + start;
  int* flag = wflag + start;
  int* slot = wslot + start;

  for (int k = tid; k < n; k += kThreads) {
    x1[k] = segs[2 * (start + k)];
    x2[k] = segs[2 * (start + k) + 1];
    sc[k] = scores[start + k];
    area[k] = (x2[k] - x1[k]) + 1e-6f;
    ind[k] = k;
  }
  __syncthreads();

  int i = 0;
  for (; i < n; ++i) {  // i and n are the same in every thread of the block
    if (max_num > 0 && i >= max_num) break;  // picks are final: stop at the cap

    // (1) pick: argmax over [i, n)
    Best local{0.f, INT_MAX};
    for (int p = i + tid; p < n; p += kThreads) local = BestOp()(local, Best{sc[p], p});
    const Best best = ReduceBest(tmp.best).Reduce(local, BestOp());
    if (tid == 0) s_pick = best.pos;
    __syncthreads();

    // (2) swap the pick into slot i
    if (tid == 0) {
      const int m = s_pick;
      float f;
      int t;
      f = x1[i]; x1[i] = x1[m]; x1[m] = f;
      f = x2[i]; x2[i] = x2[m]; x2[m] = f;
      f = sc[i]; sc[i] = sc[m]; sc[m] = f;
      f = area[i]; area[i] = area[m]; area[m] = f;
      t = ind[i]; ind[i] = ind[m]; ind[m] = t;
    }
    __syncthreads();
    const float ix1 = x1[i], ix2 = x2[i], iarea = area[i];

    // (3) decay the rest
    int alive_local = 0;
    for (int p = i + 1 + tid; p < n; p += kThreads) {
      const float ovr = iou_1d(ix1, ix2, iarea, x1[p], x2[p], area[p]);
      float w = 1.f;
      if (method == kLinear) {
        if (ovr >= iou_threshold) w = 1.f - ovr;
      } else {
        w = expf(-(ovr * ovr) / sigma);
      }
      const float s = sc[p] * w;
      sc[p] = s;
      const int a = (s < min_score) ? 0 : 1;
      flag[p] = a;
      alive_local += a;
    }
    const int alive_sum = ReduceInt(tmp.sum).Sum(alive_local);
    if (tid == 0) s_alive = alive_sum;
    __syncthreads();
    const int alive = s_alive;

    // (4) remove the dead rows, reproducing the reference's final positions
    const int a0 = i + 1;
    if (alive < n - a0) {
      const int b = a0 + alive;
      int carry = 0;
      for (int base = a0; base < b; base += kThreads) {  // dead slots of [a0, b), ascending
        const int p = base + tid;
        const int dead = (p < b) ? 1 - flag[p] : 0;
        int rank, total;
        Scan(tmp.scan).ExclusiveSum(dead, rank, total);
        if (dead) slot[carry + rank] = p;
        carry += total;
        __syncthreads();
      }
      const int ndead = carry;  // == number of survivors in [b, n)
      carry = 0;
      for (int base = b; base < n; base += kThreads) {  // survivors of [b, n) fill them
        const int q = base + tid;
        const int a = (q < n) ? flag[q] : 0;
        int rank, total;
        Scan(tmp.scan).ExclusiveSum(a, rank, total);
        if (a) {
          const int dst = slot[ndead - 1 - (carry + rank)];  // last survivor -> first dead slot
          x1[dst] = x1[q];
          x2[dst] = x2[q];
          sc[dst] = sc[q];
          area[dst] = area[q];
          ind[dst] = ind[q];
        }
        carry += total;
        __syncthreads();
      }
      n = b;
    }
  }

  const int cnt = i < n ? i : n;
  for (int k = tid; k < cnt; k += kThreads) {
    keep[start + k] = start + ind[k];
    out_scores[start + k] = sc[k];
  }
  if (tid == 0) counts[g] = cnt;
}

__global__ void __launch_bounds__(kThreads)
    hard_nms_kernel(const float* __restrict__ segs, const float* __restrict__ scores,
                    const int64_t* __restrict__ offsets, float iou_threshold, float min_score,
                    int64_t max_num, float* warea, int* wflag,
                    int64_t* __restrict__ keep, float* __restrict__ out_scores,
                    int64_t* __restrict__ counts) {
  const int tid = threadIdx.x;
  const int64_t g = blockIdx.x;
  const int64_t start = offsets[g];
  const int m = static_cast<int>(offsets[g + 1] - start);
  const float* x = segs + 2 * start;
  const float* sc = scores + start;
  float* area = warea + start;
  int* flag = wflag + start;

  for (int k = tid; k < m; k += kThreads) {
    area[k] = (x[2 * k + 1] - x[2 * k]) + 1e-6f;
    flag[k] = (!(min_score > 0.f) || sc[k] > min_score) ? 1 : 0;
  }
  __syncthreads();

  int cnt = 0;  // the same in every thread of the block
  for (int i = 0; i < m; ++i) {
    if (!flag[i]) continue;
    if (max_num > 0 && cnt >= max_num) break;
    if (tid == 0) {
      keep[start + cnt] = start + i;
      out_scores[start + cnt] = sc[i];
    }
    ++cnt;
    const float ix1 = x[2 * i], ix2 = x[2 * i + 1], iarea = area[i];
    for (int j = i + 1 + tid; j < m; j += kThreads) {
      if (flag[j] && iou_1d(ix1, ix2, iarea, x[2 * j], x[2 * j + 1], area[j]) >= iou_threshold) {
        flag[j] = 0;
      }
    }
    __syncthreads();
  }
  if (tid == 0) counts[g] = cnt;
}

}  // namespace

std::vector<at::Tensor> nms_groups_cuda(const at::Tensor& segs, const at::Tensor& scores,
                                        const at::Tensor& offsets, double iou_threshold,
                                        double min_score, double sigma, int64_t method,
                                        int64_t max_num) {
  check_inputs(segs, scores, offsets, sigma, method);
  TORCH_CHECK(segs.is_cuda(), "nms_groups_cuda: tensors must be on a CUDA device, got ",
              segs.device());
  const c10::cuda::CUDAGuard guard(segs.device());
  const int64_t n = segs.size(0);
  const int64_t g = offsets.size(0) - 1;
  at::Tensor keep = at::full({n}, -1, segs.options().dtype(at::kLong));
  at::Tensor out_scores = at::zeros({n}, segs.options());
  at::Tensor counts = at::zeros({g}, segs.options().dtype(at::kLong));
  if (n == 0 || g == 0) return {keep, out_scores, counts};
  TORCH_CHECK(g <= INT_MAX, "nms_groups_cuda: at most 2^31 - 1 groups, got ", g);

  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const auto f32 = segs.options();
  const auto i32 = segs.options().dtype(at::kInt);
  at::Tensor flag = at::empty({n}, i32);
  if (method == kHard) {
    at::Tensor area = at::empty({n}, f32);
    hard_nms_kernel<<<static_cast<unsigned int>(g), kThreads, 0, stream>>>(
        segs.data_ptr<float>(), scores.data_ptr<float>(), offsets.data_ptr<int64_t>(),
        static_cast<float>(iou_threshold), static_cast<float>(min_score), max_num,
        area.data_ptr<float>(), flag.data_ptr<int>(), keep.data_ptr<int64_t>(),
        out_scores.data_ptr<float>(), counts.data_ptr<int64_t>());
  } else {
    at::Tensor work = at::empty({4, n}, f32);  // x1, x2, score, area
    at::Tensor ind = at::empty({n}, i32);
    at::Tensor slot = at::empty({n}, i32);
    float* w = work.data_ptr<float>();
    soft_nms_kernel<<<static_cast<unsigned int>(g), kThreads, 0, stream>>>(
        segs.data_ptr<float>(), scores.data_ptr<float>(), offsets.data_ptr<int64_t>(),
        static_cast<float>(iou_threshold), static_cast<float>(min_score),
        static_cast<float>(sigma), static_cast<int>(method), max_num, w, w + n, w + 2 * n,
        w + 3 * n, ind.data_ptr<int>(), flag.data_ptr<int>(), slot.data_ptr<int>(),
        keep.data_ptr<int64_t>(), out_scores.data_ptr<float>(), counts.data_ptr<int64_t>());
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {keep, out_scores, counts};
}

}  // namespace nms1d
