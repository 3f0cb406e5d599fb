"""Builds lightgcn_ext._C against the torch that is already installed.

    pip install "setuptools>=64" wheel ninja    # the build requirements, besides torch
    pip install --no-build-isolation .          # or: python setup.py build_ext --inplace

Environment:
    FORCE_CUDA=1   build the CUDA kernels even where torch or nvcc was not detected
    FORCE_CPU=1    build the CPU kernels only
    DEBUG=1        -O0 -g (and -G for device code)
    VERBOSE=1      show the compiler command lines; by default only the compilers'
                   diagnostics are shown (everything when the build fails)
    MAX_JOBS, TORCH_CUDA_ARCH_LIST   honoured by torch.utils.cpp_extension

Build requirements (pyproject.toml's [build-system] requires): torch, ninja, and
setuptools with bdist_wheel: setuptools>=70.1 has it, older setuptools needs the
`wheel` package. Without build isolation pip does not check them, so this file
does, and says what to install.

Sources: every csrc/*.cpp and csrc/cpu/*.cpp, and csrc/cuda/*.cu with CUDA.
CMakeLists.txt globs the same, all but csrc/python_module.cpp.
"""
import importlib.util
import os
import re
import shutil
import sys
import tempfile
from contextlib import contextmanager
from glob import glob
from pathlib import Path

import setuptools
from setuptools import find_packages, setup
from setuptools.errors import SetupError

INSTALL_BUILD_REQUIREMENTS = 'pip install "setuptools>=64" wheel ninja'
# The commands that make a wheel, and so need bdist_wheel (dist_info: pip's metadata step).
WHEEL_COMMANDS = {"bdist_wheel", "dist_info", "editable_wheel"}


def env_flag(name):
    return os.environ.get(name, "0") not in ("", "0")


def has_module(name):
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:
        return False


# bdist_wheel is built into setuptools>=70.1, and comes from `wheel` before that; without
# it, pip's metadata step fails with "invalid command 'bdist_wheel'".
if WHEEL_COMMANDS.intersection(sys.argv[1:]) and not (
        has_module("setuptools.command.bdist_wheel") or has_module("wheel")):
    sys.exit(f"error: building a wheel with setuptools {setuptools.__version__} needs the "
             f"`wheel` package (setuptools>=70.1 has bdist_wheel built in). Install the build "
             f"requirements into this environment, then run this again:\n"
             f"    {INSTALL_BUILD_REQUIREMENTS}")

if not has_module("torch"):
    sys.exit("error: lightgcn_ext builds against the installed torch, and none was found: "
             "install torch first (https://pytorch.org), then run this again with "
             "--no-build-isolation")

import torch  # noqa: E402
from torch.utils.cpp_extension import (  # noqa: E402
    CUDA_HOME, BuildExtension, CppExtension, CUDAExtension)

# pip's ninja package puts its binary in the environment's scripts directory, which is not
# on PATH when a venv's pip is run without activating the venv.
if shutil.which("ninja") is None and has_module("ninja"):
    import ninja

    if ninja.BIN_DIR:
        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


def sources(*patterns):
    return sorted(path for pattern in patterns for path in glob(pattern))


DEBUG = env_flag("DEBUG")
VERBOSE = env_flag("VERBOSE")
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
# -ffp-contract=off: no multiply and add fused behind the code's back, so that every copy of the
# CPU sweep (baseline, AVX2, AVX-512: csrc/cpu/sweep.h) computes the same bits, and a run goes on
# with the same numbers on another x86 CPU.
cxx = ["-O0", "-g", "-fopenmp"] if DEBUG else ["-O3", "-fno-math-errno", "-fopenmp"]
cxx += ["-ffp-contract=off"]
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


@contextmanager
def stdout_to(file):
    """Points file descriptor 1 (where subprocesses write) at file, for the block."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(file.fileno(), 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


# What `ninja -v` says besides the compilers' output: its command lines,
# "[3/5] c++ -MMD ... -c csrc/ops.cpp -o ...", and that nothing needed rebuilding.
NINJA_LINES = r"\[\d+/\d+\] |ninja: no work to do\."


def show(log, hide=None):
    """Writes what log holds to stdout, less the lines that match hide."""
    log.seek(0)
    lines = log.read().decode(errors="replace").splitlines(keepends=True)
    sys.stdout.write("".join(line for line in lines if not (hide and hide.match(line))))
    sys.stdout.flush()


class BuildExt(BuildExtension):
    """torch's BuildExtension (ninja, one job per source), quiet unless VERBOSE=1.

    BuildExtension always runs `ninja -v`, with ninja's output on file descriptor 1,
    and has no switch to turn that off (pytorch/pytorch#59251). So the build's output
    goes to a temporary file, and afterwards all of it but the command lines is shown:
    ninja's, and the link line that setuptools logs unless -q. The compilers' warnings
    stay visible. When the build fails, all of it is shown.
    """

    def run(self):
        if not self.use_ninja:  # BuildExtension found no ninja on PATH
            raise SetupError("lightgcn_ext builds with ninja, which was not found. Install the "
                             f"build requirements, then run this again:\n"
                             f"    {INSTALL_BUILD_REQUIREMENTS}")
        if VERBOSE:
            return super().run()
        with tempfile.TemporaryFile() as log:
            try:
                with stdout_to(log):
                    super().run()
            except BaseException:
                show(log)
                raise
            show(log, hide=self.command_lines())

    def command_lines(self):
        """A pattern of the command lines in the build's output."""
        commands = (getattr(self.compiler, name, None)
                    for name in ("compiler_so", "compiler_cxx", "linker_so"))
        programs = sorted({re.escape(cmd[0]) + " " for cmd in commands if cmd})
        return re.compile("|".join([NINJA_LINES, *programs]))


setup(
    license="MIT",  # here, not in pyproject.toml: see its comment
    packages=find_packages(include=["lightgcn_ext", "lightgcn_ext.*"]),
    ext_modules=[extension],
    cmdclass={"build_ext": BuildExt},
)
