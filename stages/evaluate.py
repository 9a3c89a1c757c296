"""DVC stage `evaluate`: runs `petscan.pipeline.evaluate` (whose docstring is the --help)."""

import sys

from petscan.pipeline.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
