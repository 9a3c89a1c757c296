"""`python -m petscan.tuning --config SPEC --worker I`: one worker process of a study."""

import sys

from petscan.tuning.workers import main

sys.exit(main())
