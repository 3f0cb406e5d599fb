"""The two builds (setup.py and CMakeLists.txt) compile the same sources with the same flags,
all taken from csrc/build.json, and that file lists every source under csrc/."""
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CMAKE = shutil.which("cmake")
CMAKE_MINIMUM = (3, 19)  # CMakeLists.txt's cmake_minimum_required (string(JSON))


def load_setup_py():
    """setup.py as a module; its setup() call runs only under __main__."""
    spec = importlib.util.spec_from_file_location("lightgcn_ext_setup_py", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


def test_manifest_lists_every_source_exactly_once():
    manifest = load_setup_py().read_manifest()
    listed = {}
    for kind, paths in manifest["sources"].items():
        for path in paths:
            assert path not in listed, f"{path} is listed under both {listed[path]!r} and {kind!r}"
            listed[path] = kind
            assert (ROOT / path).is_file(), f"csrc/build.json lists {path} ({kind}), which does not exist"
    on_disk = {
        p.relative_to(ROOT).as_posix()
        for pattern in ("*.cpp", "*.cu")
        for p in (ROOT / "csrc").rglob(pattern)
    }
    unlisted = sorted(on_disk - set(listed))
    assert not unlisted, f"sources under csrc/ that csrc/build.json does not list: {unlisted}"


@needs_cmake
@pytest.mark.parametrize("build_type", ["Release", "Debug"])
def test_cmake_builds_what_setup_py_builds(tmp_path, monkeypatch, build_type):
    torch = pytest.importorskip("torch")
    run(
        [
            CMAKE, "-S", ROOT, "-B", tmp_path,
            f"-DCMAKE_BUILD_TYPE={build_type}",
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
            f"-DLIGHTGCN_EXT_PYTHON={sys.executable}",
        ]
    )
    cmake = json.loads((tmp_path / "lightgcn_ext_build_manifest.json").read_text())

    setup_py = load_setup_py()
    manifest = setup_py.read_manifest()
    python_only = set(manifest["sources"]["python_module"])
    expected_sources = [
        path for path in setup_py.extension_sources(manifest, with_cuda=False)
        if path not in python_only
    ]
    assert cmake["sources"] == expected_sources
    assert cmake["with_cuda"] is False
    assert "python_module" not in cmake["kinds"]

    # The flags setup.py would compile with, in the same mode.
    monkeypatch.setenv("FORCE_CPU", "1")
    monkeypatch.delenv("FORCE_CUDA", raising=False)
    monkeypatch.setenv("DEBUG", "1" if build_type == "Debug" else "0")
    extension = setup_py.make_extension()
    assert [s for s in extension.sources if s not in python_only] == cmake["sources"]
    setup_flags = extension.extra_compile_args["cxx"]
    assert cmake["cxx_flags"] == [f for f in setup_flags if not f.startswith("-D")]
    assert cmake["cxx_flags"] == manifest["cxx_debug_flags" if build_type == "Debug" else "cxx_flags"]
    # The definitions the kernels could see (the torch version only matters to python_module).
    setup_definitions = [
        f[len("-D"):] for f in setup_flags
        if f.startswith("-D") and not f.startswith("-DLIGHTGCN_EXT_TORCH_VERSION")
    ]
    assert cmake["compile_definitions"] == setup_definitions


@pytest.mark.slow
@needs_cmake
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_cmake_build_and_ctest(tmp_path):
    """tools/ctest.sh: configure, build (-j2) and run the C++ tests, in a fresh folder."""
    pytest.importorskip("torch")
    env = dict(os.environ, BUILD_DIR=str(tmp_path), JOBS="2", PYTHON=sys.executable)
    env.pop("BUILD_TYPE", None)
    proc = run(["bash", ROOT / "tools" / "ctest.sh"], env=env, timeout=900)
    assert "100% tests passed" in proc.stdout, proc.stdout[-3000:]
