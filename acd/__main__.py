"""`python -m acd` runs the command line."""

import sys

from acd.cli import main

sys.exit(main())
