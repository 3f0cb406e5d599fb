"""The README and docs/ say what the code does: their Python runs and prints
what they say it prints, and their commands name what exists.

Python blocks. Every ```python block of README.md and docs/*.md runs as a
newcomer would paste it: in a fresh interpreter, from an empty directory, with
only the repository on the path. Each is followed (blank lines between allowed)
by a ```text block holding what it prints, and the test compares the two line
by line:

- text matches exactly, after trailing spaces are stripped;
- `...` inside a line matches any text on that line, and a line that is only
  `...` matches any number of lines (doctest's ELLIPSIS);
- an integer matches the same integer; a decimal number (`0.25`, `1e-07`)
  matches a number within one unit of its last written digit (`0.25`: 0.24 to
  0.26; `1e-07`: 0 to 2e-07), so that the last digit of a float may differ
  between machines and torch versions; write fewer digits for a looser match.

A block whose first line is `# needs: cuda` runs only where CUDA is available;
its test id ends in `-cuda`, so that a GPU run of `pytest -k cuda` includes it.
`# needs: MODULE` (an optional package, such as pyarrow) runs only where it imports.

Commands. Shell blocks are not run. Every `make TARGET` that README.md or a
page of docs/ names (in a code block or inline code) must be a target of the
Makefile, and every `python -m lightgcn_ext SUBCOMMAND --option` (also under
torchrun, or as the `lightgcn-ext` console script) and `python -m bench.NAME
--option` must name a subcommand and options that its `--help` lists.
"""
import functools
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# A fence opens at the start of a line with ``` and an info string, and closes
# at the next line that is only ```.
FENCE = re.compile(r"^```[ \t]*(\S*)[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")
NEEDS_CUDA = "# needs: cuda"
NEEDS_MODULE = re.compile(r"# needs: ([A-Za-z_]\w*)\n")  # an optional package


def fenced_blocks(text):
    """(line number, language, code, end offset) of each fenced block."""
    return [(text.count("\n", 0, m.start()) + 1, m.group(1).lower(), m.group(2), m.end())
            for m in FENCE.finditer(text)]


def python_examples(text):
    """(line number, code, expected output or None) of each ```python block;
    the expected output is the ```text block right after it."""
    blocks = fenced_blocks(text)
    examples = []
    for i, (line, language, code, end) in enumerate(blocks):
        if language != "python":
            continue
        following = blocks[i + 1] if i + 1 < len(blocks) else None
        expected = None
        if following and following[1] == "text":
            between = text[end:text.index("```", end)]
            if not between.strip():
                expected = following[2]
        examples.append((line, code, expected))
    return examples


def _line_pattern(expected_line):
    """A regex for one expected line, and for each number in it a function that
    accepts the number found in its place."""
    pattern, checks, pos = [], [], 0
    for match in re.finditer(rf"\.\.\.|{NUMBER.pattern}", expected_line):
        pattern.append(re.escape(expected_line[pos:match.start()]))
        token = match.group()
        if token == "...":
            pattern.append(".*?")
        else:
            pattern.append(f"({NUMBER.pattern})")
            checks.append(functools.partial(_number_matches, token))
        pos = match.end()
    pattern.append(re.escape(expected_line[pos:]))
    return re.compile("".join(pattern)), checks


def _number_matches(expected, found):
    if re.fullmatch(r"[-+]?\d+", expected):
        return re.fullmatch(r"[-+]?\d+", found) is not None and int(found) == int(expected)
    mantissa = re.split("[eE]", expected)[0]
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    exponent = int(re.split("[eE]", expected)[1]) if re.search("[eE]", expected) else 0
    unit = 10.0 ** (exponent - decimals)
    return abs(float(found) - float(expected)) <= unit * (1 + 1e-9)


def line_matches(expected_line, actual_line):
    regex, checks = _line_pattern(expected_line.rstrip())
    match = regex.fullmatch(actual_line.rstrip())
    return match is not None and all(check(found) for check, found in zip(checks, match.groups()))


def output_matches(expected, actual):
    """Whether actual's lines match expected's, `...` lines matching any lines."""
    want, got = expected.rstrip("\n").split("\n"), actual.rstrip("\n").split("\n")

    @functools.lru_cache(maxsize=None)
    def match(i, j):
        if i == len(want):
            return j == len(got)
        if want[i].strip() == "...":
            return any(match(i + 1, k) for k in range(j, len(got) + 1))
        return j < len(got) and line_matches(want[i], got[j]) and match(i + 1, j + 1)

    return match(0, 0)


def _examples():
    params = []
    for page in PAGES:
        name = page.relative_to(ROOT).as_posix()
        for line, code, expected in python_examples(page.read_text(encoding="utf-8")):
            cuda = code.lstrip().startswith(NEEDS_CUDA)
            marks = [pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")] \
                if cuda else []
            module = NEEDS_MODULE.match(code.lstrip())
            if module and not cuda:
                marks = [pytest.mark.skipif(importlib.util.find_spec(module.group(1)) is None,
                                            reason=f"needs {module.group(1)}")]
            params.append(pytest.param(name, line, code, expected, marks=marks,
                                       id=f"{name}:{line}{'-cuda' if cuda else ''}"))
    return params


EXAMPLES = _examples()


# ------------------------------------------------------------ the matcher
def test_python_examples_pair_code_with_its_output():
    text = ("a\n```python\nx = 1\n```\n\n```text\n1\n```\n```\nnot python\n```\n"
            "```Python title\ny = 2\n```\nprose\n```text\n2\n```\n")
    assert python_examples(text) == [(2, "x = 1\n", "1\n"), (12, "y = 2\n", None)]


@pytest.mark.parametrize("expected, actual, ok", [
    ("tensor([[4, 3]])", "tensor([[4, 3]])", True),
    ("tensor([[4, 3]])", "tensor([[4, 5]])", False),     # integers exactly
    ("loss 0.6931", "loss 0.6932", True),                 # one unit of the last digit
    ("loss 0.6931", "loss 0.6934", False),
    ("loss 0.69", "loss 0.7", True),
    ("err 1e-07", "err 1.6e-07", True),
    ("err 1e-07", "err 3e-07", False),
    ("n 120000", "n 120001", False),
    ("recall 0.12 (...)", "recall 0.1234 (epoch 3)", True),
    ("recall 0.12 (...)", "ndcg 0.1234 (epoch 3)", False),
    ("first\n...\nlast", "first\nanything\nat all\nlast", True),
    ("first\n...\nlast", "first\nlast", True),
    ("first\nlast", "first\nextra\nlast", False),
    ("a\nb", "a", False),
])
def test_output_matches(expected, actual, ok):
    assert output_matches(expected, actual) == ok


# ------------------------------------------------------------ the blocks
def test_readme_and_docs_have_python_examples():
    pages = {name for name, *_ in (param.values for param in EXAMPLES)}
    assert "README.md" in pages, "README.md has no ```python block"


@pytest.mark.parametrize("page, line, code, expected", EXAMPLES)
def test_python_example_prints_what_the_page_says(tmp_path, page, line, code, expected):
    assert expected is not None, (
        f"the ```python block at {page}:{line} has no ```text block after it saying what it "
        "prints")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "LIGHTGCN_EXT_DATA": str(tmp_path / "data")}  # no data of the developer's machine
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (
        f"the ```python block at {page}:{line} exited with {result.returncode}\n"
        f"--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}")
    assert output_matches(expected, result.stdout), (
        f"the ```python block at {page}:{line} printed\n{result.stdout}\n"
        f"--- but the page says\n{expected}")


# ------------------------------------------------------------ the commands
def code_text(text):
    """The shell and inline code of a page, one logical line each (backslash
    continuations joined, comments dropped); Python and its output left out."""
    lines = []
    for _, language, code, _ in fenced_blocks(text):
        if language not in ("python", "text"):
            lines += code.replace("\\\n", " ").splitlines()
    prose = FENCE.sub("", text)
    # Inline code may wrap onto the next line, as markdown allows.
    lines += [" ".join(code.split()) for code in re.findall(r"`([^`]+)`", prose)]
    return [line.split(" #")[0] for line in lines if not line.lstrip().startswith("#")]


def make_targets_named(text):
    return {target for line in code_text(text)
            for target in re.findall(r"(?:^|[\s;&(])make ([A-Za-z][\w-]*)", line)}


def commands_named(text):
    """(module, subcommand or None, options) of each `python -m lightgcn_ext`,
    `lightgcn-ext` or `python -m bench.NAME` command line; a subcommand of two
    words (`data describe`) is one string."""
    commands = []
    for line in code_text(text):
        for piece in re.split(r"&&|\|\||;|\|", line):
            try:
                words = shlex.split(piece, comments=True)
            except ValueError:  # an unbalanced quote in prose-like inline code
                words = piece.split()
            for i, word in enumerate(words):
                if word == "lightgcn-ext":
                    module, rest = "lightgcn_ext", words[i + 1:]
                elif word == "-m" and i + 1 < len(words) and \
                        re.fullmatch(r"lightgcn_ext|bench\.\w+", words[i + 1]):
                    module, rest = words[i + 1], words[i + 2:]
                else:
                    continue
                # A subcommand is one or two words (`train`, `data describe`).
                path = []
                while module == "lightgcn_ext" and len(path) < 2 and len(rest) > len(path) \
                        and re.fullmatch(r"[a-z][a-z-]*", rest[len(path)]):
                    path.append(rest[len(path)])
                subcommand = " ".join(path) or None
                options = {w.split("=")[0] for w in rest if re.fullmatch(r"--[\w-]+(=.*)?", w)}
                commands.append((module, subcommand, options))
                break
    return commands


@functools.lru_cache(maxsize=None)
def help_text(module, subcommand):
    args = [sys.executable, "-m", module, *(subcommand.split() if subcommand else []), "--help"]
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, f"{' '.join(args[1:])} failed:\n{result.stderr[-2000:]}"
    return result.stdout


def makefile_targets():
    text = (ROOT / "Makefile").read_text()
    return {name for line in re.findall(r"^([\w .-]+):(?!=)", text, re.MULTILINE)
            for name in line.split()}


def test_command_parsers():
    page = ("```\nmake demo    # then make nothing\nPYTHON=python3 make test-fast\n"
            "torchrun --nproc-per-node 4 -m lightgcn_ext train --data gowalla \\\n"
            "    --out runs/x --max-epochs-now=5\n```\nThen `lightgcn-ext --help` and "
            "`python3 -m bench.bench_train --quick`; make sense of it.\n"
            "`lightgcn-ext data describe log.csv --seed 1`\n"
            "```python\nos.system('make nope')\n```\n")
    assert make_targets_named(page) == {"demo", "test-fast"}
    assert commands_named(page) == [
        ("lightgcn_ext", "train", {"--data", "--out", "--max-epochs-now"}),
        ("lightgcn_ext", None, {"--help"}),
        ("bench.bench_train", None, {"--quick"}),
        ("lightgcn_ext", "data describe", {"--seed"})]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_make_targets_named_exist(page):
    missing = make_targets_named(page.read_text(encoding="utf-8")) - makefile_targets()
    assert not missing, f"{page.name} names make targets the Makefile lacks: {sorted(missing)}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_commands_named_exist(page):
    problems = []
    for module, subcommand, options in commands_named(page.read_text(encoding="utf-8")):
        words = subcommand.split() if subcommand else []
        if any(not re.search(rf"\b{re.escape(word)}\b",
                             help_text(module, " ".join(words[:k]) or None))
               for k, word in enumerate(words)):
            problems.append(f"python -m {module} {subcommand}: no such subcommand")
            continue
        listed = help_text(module, subcommand)
        for option in sorted(options):
            if not re.search(rf"{re.escape(option)}(?![\w-])", listed):
                problems.append(f"python -m {module} {subcommand or ''} {option}: "
                                "not in its --help")
    assert not problems, f"{page.name}:\n" + "\n".join(problems)


def test_readme_names_the_two_commands():
    assert {"demo", "test"} <= make_targets_named((ROOT / "README.md").read_text())
