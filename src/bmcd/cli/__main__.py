"""``python -m bmcd.cli``: the same as the ``bmcd`` console script."""

import sys

from . import main

sys.exit(main())
