"""A quick estimator for tests that time something only to check what is recorded, not its value."""

from lrx.measure.estimator import Estimator

QUICK = Estimator(warmup_s=0.0, block_s=0.0005, min_rounds=2, max_rounds=3, max_s=1.0)
QUICK_OVERRIDES = [  # the same as Hydra overrides, and no waiting for a quiet machine
    "latency.estimator.warmup_s=0",
    "latency.estimator.block_s=0.0005",
    "latency.estimator.min_rounds=2",
    "latency.estimator.max_rounds=3",
    "latency.quiet_wait_s=0",
]
