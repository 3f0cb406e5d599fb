"""The CMake build (CMakeLists.txt) compiles what setup.py compiles, with the same flags,
and its C++ tests pass."""
import json
import os
import re
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CMAKE = shutil.which("cmake")
CMAKE_MINIMUM = (3, 18)  # CMakeLists.txt's cmake_minimum_required


def cmake_version():
    out = subprocess.run([CMAKE, "--version"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"(\d+)\.(\d+)", out)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


needs_cmake = pytest.mark.skipif(
    CMAKE is None or cmake_version() < CMAKE_MINIMUM,
    reason=f"needs cmake >= {'.'.join(map(str, CMAKE_MINIMUM))}",
)


def run(cmd, **kwargs):
    """Runs cmd; on failure, the assertion shows its output."""
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert proc.returncode == 0, (
        f"{' '.join(map(str, cmd))} exited with {proc.returncode}\n"
        f"--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-6000:]}"
    )
    return proc


def setup_py_extension(monkeypatch, debug):
    """The CPU extension that setup.py would build; its setup() call is caught, not run."""
    import setuptools

    calls = []
    monkeypatch.setattr(setuptools, "setup", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setenv("FORCE_CPU", "1")
    monkeypatch.setenv("DEBUG", "1" if debug else "0")
    monkeypatch.chdir(ROOT)
    runpy.run_path(str(ROOT / "setup.py"))
    [extension] = calls[0]["ext_modules"]
    return extension


@needs_cmake
@pytest.mark.parametrize("build_type", ["Release", "Debug"])
def test_cmake_compiles_what_setup_py_compiles(tmp_path, monkeypatch, build_type):
    """Configures only (seconds): the compile commands CMake generates, against setup.py's."""
    torch = pytest.importorskip("torch")
    run([
        CMAKE, "-S", ROOT, "-B", tmp_path,
        f"-DCMAKE_BUILD_TYPE={build_type}",
        f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
        "-DCMAKE_EXPORT_COMPILE_COMMANDS=ON",
    ])
    commands = {
        Path(entry["file"]).resolve().relative_to(ROOT).as_posix(): entry["command"].split()
        for entry in json.loads((tmp_path / "compile_commands.json").read_text())
    }
    extension = setup_py_extension(monkeypatch, debug=build_type == "Debug")
    cmake_sources = sorted(path for path in commands if path.startswith("csrc/"))
    assert cmake_sources == sorted(set(extension.sources) - {"csrc/python_module.cpp"})

    # setup.py's flags, but the torch version, which only csrc/python_module.cpp reads.
    flags = [f for f in extension.extra_compile_args["cxx"]
             if not f.startswith("-DLIGHTGCN_EXT_TORCH_VERSION=")]
    assert "-DLIGHTGCN_EXT_WITH_CUDA=0" in flags
    for path in cmake_sources:
        command = commands[path]
        assert set(flags) <= set(command), (path, command)
        last_opt = [f for f in command if f.startswith("-O")][-1]  # the one the compiler uses
        assert last_opt == [f for f in flags if f.startswith("-O")][-1], (path, command)


@pytest.mark.slow
@needs_cmake
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_cmake_build_and_ctest(tmp_path):
    """tools/ctest.sh: configure, build (-j2) and run the C++ tests, in a fresh folder."""
    pytest.importorskip("torch")
    env = dict(os.environ, BUILD_DIR=str(tmp_path), JOBS="2", PYTHON=sys.executable)
    env.pop("BUILD_TYPE", None)
    # The sanitizer builds of the emulated CUDA suite are left to `make ctest` (.ci/run runs
    # it): here they would only build and run the same tests a second time.
    proc = run(["bash", ROOT / "tools" / "ctest.sh", "-DLIGHTGCN_EXT_SANITIZED_TESTS=OFF"],
               env=env, timeout=900)
    assert "100% tests passed" in proc.stdout, proc.stdout[-3000:]
