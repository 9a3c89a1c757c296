"""DVC stage `train`: `petscan.pipeline.train` (its docstring is this script's --help)."""

import sys

from petscan.pipeline.train import main

if __name__ == "__main__":
    sys.exit(main())
