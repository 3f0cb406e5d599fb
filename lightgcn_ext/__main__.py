"""`python -m lightgcn_ext ...`: the command line (lightgcn_ext.cli)."""
from .cli import console_main

if __name__ == "__main__":
    console_main()
