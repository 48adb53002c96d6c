"""`python -m lab ...`: the lab CLI without the netdiag console script."""

import sys

from lab.cli import main

sys.exit(main())
