"""Builds lightgcn_ext._C against the torch that is already installed.

    pip install --no-build-isolation .          # or: python setup.py build_ext --inplace

Environment:
    FORCE_CUDA=1   build the CUDA kernels even where torch or nvcc was not detected
    FORCE_CPU=1    build the CPU kernels only
    DEBUG=1        -O0 -g (and -G for device code)
    MAX_JOBS, TORCH_CUDA_ARCH_LIST   honoured by torch.utils.cpp_extension

Sources and flags come from csrc/build.json, which CMakeLists.txt reads too.
"""
import json
import os
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent


def read_manifest():
    return json.loads((ROOT / "csrc" / "build.json").read_text())


def env_flag(name):
    return os.environ.get(name, "0") not in ("", "0")


def wants_cuda(manifest):
    """CUDA when there are CUDA sources and torch has CUDA and nvcc is found,
    or when FORCE_CUDA=1; never with FORCE_CPU=1. No GPU is needed to build."""
    from torch.utils.cpp_extension import CUDA_HOME
    import torch

    if env_flag("FORCE_CPU") or not manifest["sources"]["cuda"]:
        return False
    return env_flag("FORCE_CUDA") or (torch.version.cuda is not None and CUDA_HOME is not None)


def cuda_library_includes():
    """Headers of the pip CUDA libraries (cuSPARSE, cuBLAS, ...) that torch's
    CUDA headers include; pip puts them in site-packages/nvidia/*/include."""
    import torch

    nvidia = Path(torch.__file__).resolve().parent.parent / "nvidia"
    return sorted(str(p) for p in nvidia.glob("*/include") if p.is_dir())


def extension_sources(manifest, with_cuda):
    kinds = ["common", "python_module", "cpu"] + (["cuda"] if with_cuda else [])
    return [path for kind in kinds for path in manifest["sources"][kind]]


def make_extension():
    import torch
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    manifest = read_manifest()
    with_cuda = wants_cuda(manifest)
    debug = env_flag("DEBUG")
    cxx = list(manifest["cxx_debug_flags" if debug else "cxx_flags"])
    cxx.append(f'-DLIGHTGCN_EXT_TORCH_VERSION="{torch.__version__}"')
    cxx.append(f"-DLIGHTGCN_EXT_WITH_CUDA={int(with_cuda)}")
    kwargs = dict(
        name="lightgcn_ext._C",
        sources=extension_sources(manifest, with_cuda),
        extra_compile_args={"cxx": cxx},
    )
    if not with_cuda:
        return CppExtension(**kwargs)
    kwargs["extra_compile_args"]["nvcc"] = list(
        manifest["nvcc_debug_flags" if debug else "nvcc_flags"]
    )
    kwargs["include_dirs"] = cuda_library_includes()
    return CUDAExtension(**kwargs)


if __name__ == "__main__":
    from torch.utils.cpp_extension import BuildExtension

    setup(
        packages=find_packages(include=["lightgcn_ext", "lightgcn_ext.*"]),
        ext_modules=[make_extension()],
        cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    )
