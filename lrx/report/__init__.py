"""Reports from ``results.json`` files alone (no torch, no Lightning): ``python -m lrx.report
SWEEP_DIR ...`` writes report.md (the table), report.png (the plot) and, with ``--csv``, a
per-stage CSV. :mod:`lrx.report.rows` builds the rows, :mod:`lrx.report.plot` the plot."""
