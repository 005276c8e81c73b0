// Python bindings of the 1-D NMS extension (module libs.ops._nms_ext).
#include <torch/extension.h>

#include "nms.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "1-D NMS (hard, linear and Gaussian soft-NMS) over contiguous groups; see nms.h";
  m.def("nms_groups", &nms1d::nms_groups,
        "NMS on each group [offsets[g], offsets[g+1]) of (segs (N, 2), scores (N,)); dispatches "
        "on the tensors' device. Returns [keep (N,) int64, out_scores (N,) float32, counts (G,) "
        "int64].",
        py::arg("segs"), py::arg("scores"), py::arg("offsets"), py::arg("iou_threshold"),
        py::arg("min_score"), py::arg("sigma"), py::arg("method"), py::arg("max_num"));
  m.def("with_cuda", &nms1d::built_with_cuda, "True if the CUDA kernel was compiled in");
}
