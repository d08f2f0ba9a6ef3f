"""Reports from ``results.json`` files alone (no torch, no Lightning): ``python -m lrx.report
SWEEP_DIR ...`` writes report.md (the questions' tables, then the table of every run), report.png
(the plot) and, with ``--csv``, a per-stage CSV; on ``results/runs`` it is the project's reference
page. :mod:`lrx.report.rows` builds the rows, :mod:`lrx.report.provenance` says where and when each
was measured, :mod:`lrx.report.reference` the questions' tables, :mod:`lrx.report.plot` the plot."""
