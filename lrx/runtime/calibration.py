"""Calibration images for post-training int8 quantization (OpenVINO's NNCF, ONNX Runtime's static
quantization): the first images of training batches, one at a time."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch

log = logging.getLogger(__name__)

CALIBRATION_IMAGES = 300  # training images an int8 quantization calibrates on by default (deploy.calibration_images)


def _images(item) -> torch.Tensor:
    """The images of a calibration item, (B, C, H, W): a batch or one (C, H, W) image, or the first
    of an (images, labels) pair."""
    images = item[0] if isinstance(item, (tuple, list)) else item
    return images if images.dim() == 4 else images.unsqueeze(0)


def first_images(calibration: Iterable, count: int) -> list[torch.Tensor]:
    """The first ``count`` images of ``calibration`` (tensors shaped (B, C, H, W) or (C, H, W), or
    (images, labels) batches such as a DataLoader's), each a (1, C, H, W) float32 CPU tensor; fewer, with a
    warning, where ``calibration`` holds fewer; a ValueError where it holds none."""
    images: list[torch.Tensor] = []
    for item in calibration:
        for image in _images(item).detach().to("cpu", torch.float32):
            images.append(image.unsqueeze(0).contiguous())
            if len(images) == count:
                return images
    if not images:
        raise ValueError("int8 quantization needs calibration images; none were given")
    log.warning("int8 calibrates on %d images, fewer than the %d asked for", len(images), count)
    return images
