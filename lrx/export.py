"""``python -m lrx.export RUN_DIR``: see :mod:`lrx.run.export`."""

import sys

from lrx.run.export import main

if __name__ == "__main__":
    sys.exit(main())
