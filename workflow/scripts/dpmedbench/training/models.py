"""ResNet-18 for the benchmark: torchvision's architecture, ImageNet weights from a local file, a final layer
sized to the dataset, and the normalisation layers a mechanism needs.

* ``batch``: BatchNorm as in torchvision (non-private cells, as the authors).
* ``group``: every BatchNorm replaced by GroupNorm(min(32, C), C), Opacus's fix (DP-SGD default). Per-example
  gradients stay per-example, but the pretrained BatchNorm statistics are lost.
* ``frozen``: every BatchNorm replaced by a frozen copy (``torchvision.ops.FrozenBatchNorm2d``) that keeps the
  ImageNet statistics and affine parameters fixed: no information flows between examples of a batch, and
  nothing in those layers is trained.

Every model also gets the in-place fix of Opacus issue #828: out-of-place ReLUs and residual sums, without
which Opacus's backward hooks fail on torchvision's ResNet ("Output 0 of BackwardHookFunction is a view and is
being modified inplace"). The function computed is unchanged.
"""

from __future__ import annotations

import os
import types
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from torchvision.models import resnet18
from torchvision.models.resnet import BasicBlock
from torchvision.ops.misc import FrozenBatchNorm2d

from ..data.weights import RESNET18_URL, WeightsError

Norm = Literal["batch", "group", "frozen"]


def _block_forward(self: BasicBlock, x: torch.Tensor) -> torch.Tensor:
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return self.relu(out + identity)


def _out_of_place(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
        if isinstance(module, BasicBlock):
            module.forward = types.MethodType(_block_forward, module)


def _replace_norms(module: nn.Module, norm: Norm) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            if norm == "group":
                setattr(module, name, nn.GroupNorm(min(32, child.num_features), child.num_features, affine=True))
            else:
                frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
                for key in ("weight", "bias", "running_mean", "running_var"):
                    getattr(frozen, key).copy_(getattr(child, key).detach())
                setattr(module, name, frozen)
        else:
            _replace_norms(child, norm)


def build_resnet18(*, num_classes: int, weights: str | os.PathLike[str] | None, norm: Norm = "batch") -> nn.Module:
    """torchvision ResNet-18 with ``num_classes`` outputs.

    ``weights``: path of torchvision's ImageNet state dict (loaded with ``weights_only=True``), or ``None`` to
    train from scratch.
    """
    if num_classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
    model = resnet18(weights=None)
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise WeightsError(
                f"{path}: ImageNet weights not found. Run the 'weights' rule where the internet is reachable "
                f"(it downloads {RESNET18_URL}), or set model.weights to a local copy of that file, or set "
                f"model.pretrained: false to train from scratch"
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except Exception as exc:
            raise WeightsError(f"{path}: not torchvision's ResNet-18 state dict ({exc})") from exc
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    if norm != "batch":
        _replace_norms(model, norm)
    _out_of_place(model)
    return model
