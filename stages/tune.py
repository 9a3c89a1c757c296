"""`make tune`: the Optuna study over the head's training recipe (`petscan.tuning.command`)."""

import sys

from petscan.tuning.command import main

if __name__ == "__main__":
    sys.exit(main())
