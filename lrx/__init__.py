"""lrx: low-rank expansions that make CNNs measurably faster.

Packages by concern; each imports only those above it in this list (tests/test_architecture.py):

- ``lrx.io``, ``lrx.modes``: atomic file writes; eval mode and memory format (no lrx imports);
- ``lrx.lowrank``: the methods and their registry, layer surgery (torch only, nothing else of lrx);
- ``lrx.models``, ``lrx.data``: baseline architectures and datasets;
- ``lrx.runtime``: runtimes other than PyTorch eager (ONNX Runtime);
- ``lrx.measure``: the estimator, latency, load, MACs/params, acc@1;
- ``lrx.compress``: planner, data reconstruction, guard, execution choice, BatchNorm folding;
- ``lrx.deploy``: export, check and time the deployed networks;
- ``lrx.results``: a run's folder: the results file and the saved networks;
- ``lrx.run``: the run itself (``python -m lrx.train``, ``python -m lrx.export``);
- ``lrx.report``: tables and plots from results files alone (no torch);
- ``lrx.retime``: re-time finished runs (``python -m lrx.retime``).
"""
