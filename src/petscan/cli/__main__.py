"""`python -m petscan.cli <command>`: the same as the `petscan` command."""

import sys

from petscan.cli.main import main

sys.exit(main())
