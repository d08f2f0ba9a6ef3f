"""A run's folder: the results file (:mod:`lrx.results.files`, no torch) and the saved networks
(:mod:`lrx.results.saved`)."""
