"""Deploying the baseline and the final network: export, check against torch, time. Imports
:mod:`lrx.runtime`, :mod:`lrx.measure` and below."""
