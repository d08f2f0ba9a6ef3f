"""One lrx run: the entry point, the config schema and its checks, the job and its stages, the
LightningModule, callbacks and tracking. The top of the stack: imports everything below it."""
