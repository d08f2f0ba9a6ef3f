"""Measuring a network: latency by one estimator (paired rounds, the median speed-up and its IQR),
the machine's load, MACs and params (fvcore), acc@1. Imports :mod:`lrx.lowrank` and
:mod:`lrx.runtime` only."""
