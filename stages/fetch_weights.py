"""DVC stage `fetch_weights`: runs `petscan.pipeline.fetch_weights` (see its docstring)."""

import sys

from petscan.pipeline.fetch_weights import main

if __name__ == "__main__":
    sys.exit(main())
