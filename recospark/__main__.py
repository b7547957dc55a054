"""`python -m recospark ...`: the console command (used where `recospark` is not on PATH, e.g. by the DAG)."""

import sys

from recospark.cli import main

if __name__ == "__main__":
    sys.exit(main())
