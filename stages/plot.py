"""DVC stage `plot`: runs `petscan.pipeline.plot` (whose docstring is the --help)."""

import sys

from petscan.pipeline.plot import main

if __name__ == "__main__":
    sys.exit(main())
