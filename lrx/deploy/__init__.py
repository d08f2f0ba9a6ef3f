"""Deploying the baseline and the final network: the ONNX export of a run (onnx_export), and
every deployment target (targets: a network in a runtime and precision, checked, evaluated,
timed; compare: both networks side by side, against the best dense deployment). Imports
:mod:`lrx.runtime`, :mod:`lrx.measure` and below."""
