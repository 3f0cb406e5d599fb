"""Loads the compiled extension, or says how to build it."""
import importlib

import torch

REBUILD_HINT = (
    "Rebuild it against the installed torch from the project root with\n"
    "    pip install --no-build-isolation -e .\n"
    "or  python setup.py build_ext --inplace"
)


def load_extension():
    try:
        module = importlib.import_module("lightgcn_ext._C")
    except (ImportError, OSError) as error:
        raise ImportError(
            f"lightgcn_ext's compiled extension (lightgcn_ext._C) could not be loaded: {error}\n"
            + REBUILD_HINT
        ) from error
    if module.torch_version != torch.__version__:
        raise ImportError(
            f"lightgcn_ext._C was built for torch {module.torch_version}, but torch "
            f"{torch.__version__} is installed.\n" + REBUILD_HINT
        )
    return module
