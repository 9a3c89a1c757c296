"""DVC stage `split`: runs `petscan.pipeline.split` (its docstring is the `--help`)."""

import sys

from petscan.pipeline.split import main

if __name__ == "__main__":
    sys.exit(main())
