"""`python -m recospark ...`: the console command (used where `recospark` is not on PATH, e.g. by the DAG)."""

import sys

from recospark.cli import main

sys.exit(main())
