"""Installing lightgcn_ext as the README says: a wheel built with
`pip wheel --no-build-isolation` against the installed torch, installed into a
fresh virtual environment and used away from the repository; the build quiet by
default; a missing build requirement named before anything is compiled.

The venv is made with --system-site-packages, so that it reuses this torch and
nothing is downloaded. The C++ build takes about a minute on 2 cores.
"""
import importlib.util
import os
import re
import shutil
import subprocess
import site
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
# What a wheel is built from (pyproject.toml's and setup.py's view of the repository).
SOURCES = ["setup.py", "pyproject.toml", "README.md", "csrc", "lightgcn_ext"]
PIP = ["-m", "pip", "--disable-pip-version-check", "--no-input"]
# A compiler or linker command line, as ninja -v or setuptools prints it:
# "[1/5] c++ -MMD ... -c csrc/ops.cpp -o ...", "g++ ... -shared build/.../ops.o ...".
COMMAND_LINE = re.compile(
    r"^\s*(\[\d+/\d+\] .*|.*\s-c\s+\S+\.(cpp|cu)\b.*|.*\s-shared\s.*\.o\b.*)$", re.MULTILINE)

# Not find_spec("pip"): setuptools' distutils shim takes that for pip running, and
# switches itself off for this process (then `import setuptools` fails in later tests).
if importlib.util.find_spec("venv") is None:
    pytest.skip("the venv module is not available", allow_module_level=True)


def run(cmd, timeout, **kwargs):
    start = time.perf_counter()
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                            timeout=timeout, **kwargs)
    result.seconds = time.perf_counter() - start
    result.output = result.stdout + result.stderr
    return result


def explain(result):
    return (f"{' '.join(result.args)} exited with {result.returncode}\n"
            f"--- stdout\n{result.stdout[-6000:]}\n--- stderr\n{result.stderr[-6000:]}")


def clean_env(**extra):
    """This environment less what would change the build or the import: VERBOSE (the
    build is quiet by default), PYTHONPATH (the repository must not be importable)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("VERBOSE", "PYTHONPATH", "LIGHTGCN_EXT_DATA")}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def pip():
    """This Python's pip, as a command."""
    result = run([sys.executable, *PIP, "--version"], timeout=120)
    if result.returncode != 0:
        pytest.skip(f"pip is not installed for this Python:\n{result.output[-2000:]}")
    return [sys.executable, *PIP]


@pytest.fixture(scope="module")
def source_tree(tmp_path_factory):
    """A copy of the repository's package sources, so that the build's objects and
    egg-info go there and not into the working tree."""
    src = tmp_path_factory.mktemp("src")
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.pyc")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    return src


@pytest.fixture(scope="module")
def venv_python(tmp_path_factory):
    """The python of a fresh venv that sees this Python's packages (torch) but not
    the repository."""
    venv = tmp_path_factory.mktemp("venv")
    result = run([sys.executable, "-m", "venv", "--system-site-packages", venv], timeout=300)
    python = venv / "bin" / "python"
    if result.returncode != 0 or not python.exists():
        pytest.skip(f"could not create a venv (is ensurepip installed?):\n{result.output[-2000:]}")
    if sys.prefix != sys.base_prefix:
        # Run from a venv (make check-cuda's): --system-site-packages reaches the base
        # Python's packages, not this venv's torch; a .pth file adds them.
        own = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                  timeout=60).stdout.strip()
        (Path(own) / "parent_site_packages.pth").write_text("\n".join(site.getsitepackages()))
    return python


def has_bdist_wheel(python):
    code = ("import importlib.util as u, sys; sys.exit(not (u.find_spec('wheel') or "
            "u.find_spec('setuptools.command.bdist_wheel')))")
    return run([python, "-c", code], timeout=120).returncode == 0


def test_missing_wheel_is_named_before_compiling(venv_python, source_tree):
    """The issue: setuptools<70.1 without `wheel` failed with "invalid command 'bdist_wheel'".
    ensurepip's setuptools (65.5 in Python 3.11) is such a one."""
    if has_bdist_wheel(venv_python):
        pytest.skip("the fresh venv's setuptools has bdist_wheel (setuptools>=70.1, or wheel)")
    result = run([venv_python, *PIP, "install", "--no-build-isolation", "--no-deps",
                  "--no-index", source_tree], timeout=300, cwd=source_tree.parent, env=clean_env())
    assert result.returncode != 0, explain(result)
    assert "invalid command 'bdist_wheel'" not in result.output, explain(result)
    assert 'pip install "setuptools>=64" wheel ninja' in result.output, explain(result)
    assert "Building wheel" not in result.output, explain(result)  # nothing was compiled


def test_wheel_builds_quietly_installs_and_runs_outside_the_repository(
        pip, venv_python, source_tree, tmp_path):
    if not has_bdist_wheel(sys.executable):
        pytest.skip("this Python's setuptools has no bdist_wheel: pip install wheel")
    wheelhouse = tmp_path / "wheels"
    # pip -v shows the build's own output, which pip otherwise hides when it succeeds.
    build = run([*pip, "wheel", "-v", "--no-build-isolation", "--no-deps",
                 "--no-index", "-w", wheelhouse, source_tree],
                timeout=600, cwd=source_tree.parent, env=clean_env())
    assert build.returncode == 0, explain(build)
    command = COMMAND_LINE.search(build.output)
    assert command is None, f"a command line in the default build output:\n{command[0][:500]}"
    assert "deprecat" not in build.output.lower(), explain(build)
    [wheel] = wheelhouse.glob("lightgcn_ext-*.whl")

    # VERBOSE=1 shows them: rebuild one source (ninja rebuilds only what changed).
    smallest = min((source_tree / "csrc").glob("*.cpp"), key=lambda path: path.stat().st_size)
    smallest.touch()
    verbose = run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], timeout=300,
                  cwd=source_tree, env=clean_env(VERBOSE="1"))
    assert verbose.returncode == 0, explain(verbose)
    assert f"-c {smallest}" in verbose.output, explain(verbose)

    install = run([venv_python, *PIP, "install", "--no-deps", "--no-index", wheel],
                  timeout=300, env=clean_env())
    assert install.returncode == 0, explain(install)

    # From an empty directory, with an empty home: the installed package, and no data
    # found anywhere but in the user's data directory (empty here).
    home = tmp_path / "home"
    home.mkdir()
    code = """
import sys, torch, lightgcn_ext
from lightgcn_ext.data import data_dir, find
assert lightgcn_ext.__file__.startswith(sys.prefix), lightgcn_ext.__file__
edge_index = torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]])   # the path 0 - 1 - 2
graph = lightgcn_ext.Graph.from_edge_index(edge_index, 3)
out = lightgcn_ext.propagate(graph, torch.eye(3), alpha=[0.5, 0.5])
adj = torch.zeros(3, 3)
adj[edge_index[0], edge_index[1]] = 1
deg = adj.sum(1)
expected = 0.5 * torch.eye(3) + 0.5 * adj / (deg[:, None] * deg[None, :]).sqrt()
torch.testing.assert_close(out, expected)
assert find("gowalla") is None and data_dir().is_relative_to(sys.argv[1]), data_dir()
print("ok", lightgcn_ext.__file__)
"""
    used = run([venv_python, "-c", code, home], timeout=120, cwd=tmp_path,
               env=clean_env(HOME=str(home), XDG_CACHE_HOME=""))
    assert used.returncode == 0, explain(used)
    assert "site-packages" in used.stdout and str(ROOT) not in used.stdout, used.stdout
