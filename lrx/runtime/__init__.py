"""Where a network runs besides PyTorch eager: its graph, its session and a call that runs it.
Imports nothing of lrx but :mod:`lrx.modes`."""
