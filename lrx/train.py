"""``python -m lrx.train [overrides] [-m]``: see :mod:`lrx.run.train`."""

from lrx.run.train import main

if __name__ == "__main__":
    main()
