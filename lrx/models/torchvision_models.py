"""Any torchvision classification model by name: ``model=torchvision model.arch=resnet18``.

``torchvision.models.get_model`` builds it; ``weights`` loads torchvision's pretrained weights
(``DEFAULT`` or an enum member name such as ``IMAGENET1K_V1``; null: random initialisation).
Without weights the classifier head is sized for the data (``num_classes``); with weights whose
head has another number of classes, the last classifier layer is replaced by a fresh one sized
for the data (the usual transfer set-up). Networks whose train-mode forward returns auxiliary
logits (googlenet, inception_v3) have their auxiliary heads removed, so they return plain logits.
"""

from __future__ import annotations

import torchvision.models as tvm
from torch import nn

CLASSIFICATION = tvm  # the module whose models list_models/get_model cover here


def architectures() -> list[str]:
    """Every torchvision classification model name."""
    return tvm.list_models(module=CLASSIFICATION)


def _weights(arch: str, weights: str | None):
    if weights is None:
        return None
    enum = tvm.get_model_weights(arch)
    members = list(enum.__members__)
    if weights not in members:
        raise ValueError(
            f"model.weights={weights!r} is not a weights name of {arch}; valid: {', '.join(members)} "
            "or null (random initialisation)"
        )
    return enum[weights]


def _last_linear(net: nn.Module) -> tuple[str, nn.Linear] | None:
    linears = [(name, m) for name, m in net.named_modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def _drop_aux_heads(net: nn.Module) -> None:
    """googlenet / inception_v3: no auxiliary logits, so every forward returns a tensor."""
    if getattr(net, "aux_logits", False):
        net.aux_logits = False
        for name in ("aux1", "aux2", "AuxLogits"):
            if hasattr(net, name):
                setattr(net, name, None)


def torchvision_net(arch: str, num_classes: int, weights: str | None = None) -> nn.Module:
    """The torchvision model ``arch`` with ``num_classes`` outputs (see the module docstring)."""
    valid = architectures()
    if arch not in valid:
        raise ValueError(f"model.arch={arch!r} is not a torchvision classification model; valid: {', '.join(valid)}")
    w = _weights(arch, weights)
    if w is None:
        kwargs = {"aux_logits": False, "init_weights": True} if arch in ("googlenet", "inception_v3") else {}
        net = tvm.get_model(arch, weights=None, num_classes=num_classes, **kwargs)
    else:
        try:
            net = tvm.get_model(arch, weights=w)
        except Exception as e:  # noqa: BLE001 - offline: urllib, http or hash errors, all one message here
            raise OSError(
                f"model.weights={weights!r}: torchvision could not load {w} from {w.url} ({type(e).__name__}: {e}). "
                f"Download it where the network allows (it is cached under ~/.cache/torch/hub/checkpoints/), "
                f"or set model.weights=null and pass a local state_dict as baseline.ckpt=PATH"
            ) from None
        head = _last_linear(net)
        if head is not None and head[1].out_features != num_classes:
            net.set_submodule(head[0], nn.Linear(head[1].in_features, num_classes))
    _drop_aux_heads(net)
    return net
