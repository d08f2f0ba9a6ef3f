"""Saved networks: a state_dict with what rebuilds the network, loaded with ``weights_only=True``.

``model.pt`` of a run holds ``{"format": 1, "model": <the model config's net node>, "pruned":
{name: channel counts}, "layers": {name: LowRankConv.spec()}, "state_dict": ...}``: the network is
rebuilt from its model config (Hydra's ``instantiate``), each pruned module takes its channel
counts (:mod:`lrx.compress.prune`), each replaced conv becomes the layer its spec describes
(through the method registry), then the weights load. Nothing is unpickled but tensors and plain values, and
the file does not depend on where lrx's classes live.
"""

from __future__ import annotations

from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from lrx.compress.prune import pruned_shapes, resize
from lrx.io import PROJECT, save_torch
from lrx.lowrank import LowRankConv
from lrx.results.files import MODEL, RESULTS, read_finished
from lrx.runtime.onnxruntime import OPSET

FORMAT = 1


class CheckpointMismatchError(ValueError):
    """A checkpoint that cannot be read, or whose tensors do not fit the model."""


EXPECTED = "a torch state_dict (tensors by name), or a checkpoint holding one under 'state_dict'"


def _read(path: Path, label: str):
    """What ``torch.load`` finds in the file (tensors and plain values only); one clear error for
    a missing path, a folder or any file that is not a torch file, whatever the unpickler raises."""
    if not path.is_file():
        raise CheckpointMismatchError(
            f"{label} {'is a directory' if path.is_dir() else 'does not exist'}; expected {EXPECTED}"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # text, YAML, an empty or cut file, a pickle of other objects: each fails its own way
        raise CheckpointMismatchError(
            f"{label} cannot be read: truncated or not a torch checkpoint ({type(e).__name__}); expected {EXPECTED}"
        ) from e


def _state_of(obj, label: str) -> dict:
    """The state_dict in a loaded file (raw, or under ``"state_dict"``), every entry a tensor by name."""
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
    where = " under 'state_dict'" if state is not obj else ""
    if not isinstance(state, dict) or not state:
        found = "an empty dict" if isinstance(state, dict) else f"a value of type {type(state).__name__}"
        raise CheckpointMismatchError(f"{label} holds {found}{where}; expected {EXPECTED}")
    for k, v in state.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise CheckpointMismatchError(
                f"{label} holds a dict{where} whose entry {k!r} is of type {type(v).__name__}; expected {EXPECTED}"
            )
    return state


def load_state_dict(net: nn.Module, path: str | Path, key: str | None = None) -> dict:
    """Load a state_dict (raw, or under ``"state_dict"``) into ``net``; returns the file's dict.

    Raises CheckpointMismatchError naming the path (and the config ``key`` it came from, if
    given) for anything that is not such a file, or naming the first missing, unexpected or
    mis-shaped key.
    """
    path = Path(path)
    label = f"{key}={str(path)!r}" if key else f"checkpoint {str(path)!r}"
    obj = _read(path, label)
    state = {k.removeprefix("net."): v for k, v in _state_of(obj, label).items()}  # Lightning checkpoints
    own = net.state_dict()
    for k, v in own.items():
        if k not in state:
            raise CheckpointMismatchError(f"{label} does not match the model: missing key {k!r}")
        if state[k].shape != v.shape:
            raise CheckpointMismatchError(
                f"{label} does not match the model: key {k!r} has shape "
                f"{tuple(state[k].shape)}, the model expects {tuple(v.shape)}"
            )
    for k in state:
        if k not in own:
            raise CheckpointMismatchError(f"{label} does not match the model: unexpected key {k!r}")
    net.load_state_dict(state)
    return obj


def save_network(path: str | Path, net: nn.Module, model_net: dict) -> Path:
    """Write ``net`` (built by the model config node ``model_net``, its convs partly replaced or
    pruned) to ``path`` atomically, as the module docstring describes."""
    layers = {name: m.spec() for name, m in net.named_modules() if isinstance(m, LowRankConv)}
    pruned = pruned_shapes(net, instantiate(OmegaConf.create(model_net)))
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    saved = {"format": FORMAT, "model": model_net, "pruned": pruned, "layers": layers, "state_dict": state}
    return save_torch(path, saved)


def load_network(path: str | Path) -> nn.Module:
    """The network :func:`save_network` wrote to ``path``, in eval mode on the CPU, each low-rank
    layer in the execution it was saved with."""
    path = Path(path)
    saved = _read(path, f"saved network {str(path)!r}")
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise CheckpointMismatchError(f"{path} is not a network saved by lrx (format {FORMAT})")
    net = instantiate(OmegaConf.create(saved["model"]))
    resize(net, saved.get("pruned", {}))  # files written before pruning was a method have none
    for name, spec in saved["layers"].items():
        parent, _, leaf = name.rpartition(".")
        setattr(net.get_submodule(parent), leaf, LowRankConv.from_spec(spec))
    load_state_dict(net, path)
    return net.eval()


def load_models(run_dir: str | Path) -> tuple[nn.Module, nn.Module, dict]:
    """``(baseline, final, results)`` of a finished run directory, both networks in eval mode on the
    CPU: the final network from ``model.pt``, the baseline rebuilt from the run's model config and
    the checkpoint it came from (``results["baseline"]["origin"]["path"]``, relative to the project).

    The final network's layers run the executions chosen where the run was timed: the fastest
    depends on the machine, so call :func:`lrx.compress.execution.tune` to choose this machine's.
    """
    run_dir = Path(run_dir)
    results, why = read_finished(run_dir / RESULTS)
    if results is None:
        raise ValueError(f"{run_dir} holds no finished run: {why}")
    if not (run_dir / MODEL).is_file():
        raise ValueError(f"{run_dir} has no {MODEL} (runs made before lrx saved the final network have none)")
    checkpoint = PROJECT / results["baseline"]["origin"]["path"]  # an absolute path stays as it is
    if not checkpoint.is_file():
        raise ValueError(f"the baseline of {run_dir}, {str(checkpoint)!r}, is not there")
    final = load_network(run_dir / MODEL)
    baseline = instantiate(OmegaConf.create(results["config"]["model"]["net"]))
    load_state_dict(baseline, checkpoint)
    return baseline.eval(), final, results


def opset_of(results: dict) -> int:
    """The ONNX opset a finished run deployed with (its ``deploy.opset``; lrx's default if unset)."""
    return (results["config"].get("deploy") or {}).get("opset", OPSET)


def datamodule_of(results: dict, root: str | None = None):
    """The data module a finished run read (its ``config.data``), set up for fitting; ``root``
    where the dataset is now, if not where the run read it."""
    data = OmegaConf.create(results["config"]["data"])
    if root:
        data.root = root
    dm = instantiate(data)
    dm.setup("fit")
    return dm
