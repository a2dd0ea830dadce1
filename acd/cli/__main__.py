"""`python -m acd.cli` runs the command line, as `python -m acd` and `acd` do."""

import sys

from acd.cli import main

sys.exit(main())
