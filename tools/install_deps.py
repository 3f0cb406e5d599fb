"""Installs what the build and the tests need, reusing whatever is installed.

torch is never upgraded or replaced: an installed torch (for example the
CUDA build preinstalled on a GPU machine) is used as it is, and only where
none is importable is the CPU wheel that tools/torch_versions.env pins
installed. Packages that are already importable are not touched, so this
works without a network when everything is present. Test-only packages
that cannot be installed are reported, and the tests that need them skip.
"""
import importlib.util
import subprocess
import sys
from pathlib import Path

# tools/torch_versions.env pins the torch versions that the scripts install (and says why two).
VERSIONS = dict(
    line.split("=", 1)
    for line in (Path(__file__).parent / "torch_versions.env").read_text().splitlines()
    if line and not line.startswith("#")
)
TORCH_WHEEL = f"torch=={VERSIONS['CPU_TORCH_VERSION']}"
# (import name, pip requirement, required). The in-place build (setup.py build_ext) needs
# setuptools and ninja besides torch; a wheel build may also need `wheel` (see setup.py).
# pybind11 comes with torch's headers.
PACKAGES = [
    ("setuptools", "setuptools>=64", True),
    ("ninja", "ninja", True),
    ("numpy", "numpy", True),
    ("tqdm", "tqdm", True),
    ("matplotlib", "matplotlib", True),
    ("pytest", "pytest", True),
    ("hypothesis", "hypothesis", False),
    # Reading interaction logs (lightgcn_ext.data.read_log) and its tests and benchmark.
    ("pyarrow", "pyarrow", False),
    # train --tensorboard and its test.
    ("tensorboard", "tensorboard", False),
    ("torch_geometric", "torch_geometric", False),
]


def importable(name):
    return importlib.util.find_spec(name) is not None


def pip_install(requirement):
    command = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-q",
               requirement]
    print("+", " ".join(command), flush=True)
    return subprocess.call(command) == 0


def main():
    if not importable("torch") and not pip_install(TORCH_WHEEL):
        sys.exit(f"could not install {TORCH_WHEEL}; install torch first")
    missing_optional = []
    for name, requirement, required in PACKAGES:
        if importable(name):
            continue
        if not pip_install(requirement):
            if required:
                sys.exit(f"could not install {requirement}, which the build or the tests need")
            missing_optional.append(requirement)
    if missing_optional:
        print("not installed (the tests that need them will skip):", ", ".join(missing_optional))


if __name__ == "__main__":
    main()
