"""``python -m kvprism``: the command line."""

import sys

from kvprism.cli.app import main

sys.exit(main())
