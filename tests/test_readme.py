"""Every ```python block of README.md runs as written, as a newcomer would paste it:
each in a fresh interpreter, from an empty directory, with only the repository
on the path. Blocks in any other language (shell lines, tables) are not run."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# A fence opens at the start of a line with ``` and an info string, and closes
# at the next line that is only ```.
FENCE = re.compile(r"^```[ \t]*(\S*)[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def code_blocks(text, language):
    """(line number, code) of each fenced block in language."""
    return [(text.count("\n", 0, match.start()) + 1, match.group(2))
            for match in FENCE.finditer(text) if match.group(1).lower() == language]


BLOCKS = code_blocks(README.read_text(encoding="utf-8"), "python")


def test_readme_has_python_blocks():
    assert BLOCKS, "README.md has no ```python block"


def test_code_blocks_parses_fences():
    text = "a\n```python\nx = 1\n```\n```\nnot python\n```\n```Python title\ny = 2\n```\n"
    assert code_blocks(text, "python") == [(2, "x = 1\n"), (8, "y = 2\n")]


@pytest.mark.parametrize("line, code", BLOCKS, ids=[f"README.md:{line}" for line, _ in BLOCKS])
def test_readme_python_block_runs(tmp_path, line, code):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "LIGHTGCN_EXT_DATA": str(tmp_path / "data")}  # no data of the developer's machine
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, (
        f"the ```python block at README.md:{line} exited with {result.returncode}\n"
        f"--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}")
