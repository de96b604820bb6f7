"""`python -m sweeplab`: the `sweeplab` command (sweeplab.cli), as the console script runs it."""

import sys

from sweeplab.cli import main

sys.exit(main())
