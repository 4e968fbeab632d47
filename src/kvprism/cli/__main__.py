"""``python -m kvprism.cli``."""

import sys

from kvprism.cli.app import main

sys.exit(main())
