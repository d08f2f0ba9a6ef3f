"""The compression stages around the methods: the planner, data reconstruction, the latency
guard, the execution choice and BatchNorm folding. Imports :mod:`lrx.lowrank` and
:mod:`lrx.measure`."""
