"""DVC stage `explain`: runs `petscan.pipeline.explain` (whose docstring is the --help)."""

import sys

from petscan.pipeline.explain import main

if __name__ == "__main__":
    sys.exit(main())
