"""Build the 1-D NMS extension ``libs.ops._nms_ext`` in place (nothing else is packaged here).

    python setup.py build_ext --inplace

CPU kernel always; the CUDA kernel too when a CUDA toolkit is found (``CUDA_HOME`` set by torch
and ``nvcc`` present), or skipped cleanly otherwise. ``NMS_FORCE_CPU=1`` skips CUDA even when
nvcc is there. See libs/ops/csrc/README.md.
"""
from __future__ import annotations

import os

from setuptools import setup
from torch.utils import cpp_extension

CSRC = os.path.join("libs", "ops", "csrc")


def _cuda_available() -> bool:
    if os.environ.get("NMS_FORCE_CPU", "") not in ("", "0"):
        return False
    home = cpp_extension.CUDA_HOME
    return home is not None and os.path.exists(os.path.join(home, "bin", "nvcc"))


def _extension():
    sources = [os.path.join(CSRC, "bindings.cpp"), os.path.join(CSRC, "nms_cpu.cpp")]
    extra = {"cxx": ["-O3", "-g0"]}
    if _cuda_available():
        sources.append(os.path.join(CSRC, "nms_cuda.cu"))
        extra["nvcc"] = ["-O3"]
        return cpp_extension.CUDAExtension("libs.ops._nms_ext", sources,
                                           define_macros=[("WITH_CUDA", None)],
                                           extra_compile_args=extra)
    return cpp_extension.CppExtension("libs.ops._nms_ext", sources, extra_compile_args=extra)


setup(
    name="nms-1d-ext",
    ext_modules=[_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension},
    packages=[],
)
