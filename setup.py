"""Builds lightgcn_ext._C against the torch that is already installed.

    pip install --no-build-isolation .          # or: python setup.py build_ext --inplace

Environment:
    FORCE_CUDA=1   build the CUDA kernels even where torch or nvcc was not detected
    FORCE_CPU=1    build the CPU kernels only
    DEBUG=1        -O0 -g (and -G for device code)
    MAX_JOBS, TORCH_CUDA_ARCH_LIST   honoured by torch.utils.cpp_extension

Sources: every csrc/*.cpp and csrc/cpu/*.cpp, and csrc/cuda/*.cu with CUDA.
CMakeLists.txt globs the same, all but csrc/python_module.cpp.
"""
import os
from glob import glob
from pathlib import Path

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension


def env_flag(name):
    return os.environ.get(name, "0") not in ("", "0")


def sources(*patterns):
    return sorted(path for pattern in patterns for path in glob(pattern))


DEBUG = env_flag("DEBUG")
# CUDA when torch has CUDA and nvcc is found, or with FORCE_CUDA=1; never with FORCE_CPU=1.
# No GPU is needed to build.
WITH_CUDA = (
    not env_flag("FORCE_CPU")
    and bool(sources("csrc/cuda/*.cu"))
    and (env_flag("FORCE_CUDA") or (torch.version.cuda is not None and CUDA_HOME is not None))
)

# -fopenmp: at::parallel_for is inlined from torch's headers (ATen/ParallelOpenMP.h) into our
# code, and runs serially without it. Nothing more is linked: the GOMP symbols resolve to the
# libgomp that torch itself loads.
cxx = ["-O0", "-g", "-fopenmp"] if DEBUG else ["-O3", "-fno-math-errno", "-fopenmp"]
cxx += [f'-DLIGHTGCN_EXT_TORCH_VERSION="{torch.__version__}"',
        f"-DLIGHTGCN_EXT_WITH_CUDA={int(WITH_CUDA)}"]
nvcc = ["-O0", "-g", "-G"] if DEBUG else ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]

if WITH_CUDA:
    # Headers of the pip CUDA libraries (cuSPARSE, cuBLAS, ...) that torch's CUDA headers
    # include; pip puts them in site-packages/nvidia/*/include.
    nvidia = Path(torch.__file__).resolve().parent.parent / "nvidia"
    extension = CUDAExtension(
        "lightgcn_ext._C",
        sources("csrc/*.cpp", "csrc/cpu/*.cpp", "csrc/cuda/*.cu"),
        include_dirs=sorted(str(p) for p in nvidia.glob("*/include") if p.is_dir()),
        extra_compile_args={"cxx": cxx, "nvcc": nvcc},
    )
else:
    extension = CppExtension(
        "lightgcn_ext._C",
        sources("csrc/*.cpp", "csrc/cpu/*.cpp"),
        extra_compile_args={"cxx": cxx},
    )

setup(
    packages=find_packages(include=["lightgcn_ext", "lightgcn_ext.*"]),
    ext_modules=[extension],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
