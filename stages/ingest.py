"""DVC stage `ingest`: runs `petscan.pipeline.ingest` (its docstring is the `--help`)."""

import sys

from petscan.pipeline.ingest import main

if __name__ == "__main__":
    sys.exit(main())
