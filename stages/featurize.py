"""DVC stage `featurize`: runs `petscan.pipeline.featurize` (its docstring is the `--help`)."""

import sys

from petscan.pipeline.featurize import main

if __name__ == "__main__":
    sys.exit(main())
