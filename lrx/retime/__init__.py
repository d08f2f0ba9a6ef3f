"""Re-time a finished run: every conv and the whole network in PyTorch, and the whole network in any
deployment target, quiet and next to busy neighbours, in any thread count and wait policy, for a
number of rounds, each setting in its own process; with ``--deploy``, the run's deploy stage again
(acc@1 in each target); all of it into ``retime.json`` beside the run, which the report reads
(:mod:`lrx.retime.sections`).

    python -m lrx.retime RUN_DIR [RUN_DIR ...] [--targets T ... | all | none] [--no-convs] [--deploy]
        [--rounds 3] [--busy 1] [--threads N ... | all] [--wait RUNTIME=WAIT ... | all]
        [--estimator KEY=VALUE ...] [--quiet-wait S] [--fold-bn] [--batch-size B] [--data-root PATH]
"""
