"""`python -m lightgcn_ext ...`: the command line (lightgcn_ext.cli)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
