"""spark-submit entry point: `spark-submit jobs/pipeline.py --conf conf/local.yaml [--set key=value ...]`."""

import sys

from recospark.cli import main

if __name__ == "__main__":
    sys.exit(main(["pipeline", *sys.argv[1:]]))
