"""``python -m lrx.report``: see :mod:`lrx.report.cli`."""

import sys

from lrx.report.cli import main

sys.exit(main())
