"""Where a network runs besides PyTorch eager: its graph, its session and a call that runs it.
Imports nothing of lrx but :mod:`lrx.modes`."""

# The precisions each runtime runs a network in: the deployment targets (lrx.deploy.targets) and
# where the guard and the latency planner time their candidates (latency.runtime, latency.precision).
RUNTIME_PRECISIONS = {
    "torch": ("fp32", "bf16"),
    "onnxruntime": ("fp32", "int8"),
    "openvino": ("fp32", "bf16", "int8"),
}
