"""EDSR-family network in torch.

The graph is kept to ops that OpenCV 5.0's ONNX importer handles well (Conv, Relu, Add, Mul,
DepthToSpace). There is no in-graph MeanShift: the "edsr" convention subtracts the DIV2K mean outside the
model, exactly like the OpenCV zoo EDSR ``.pb`` (see docs/design.md §6).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

# DIV2K mean in BGR order, 0-255 scale: what the "edsr" convention subtracts before the model.
DIV2K_MEAN_BGR = (103.1545782, 111.561547, 114.35629928)

TAILS = ("shuffle", "espcn")
FAMILIES = ("edsr", "sesr")
SESR_EXPAND = 256  # the width SESR's paper expands each linear block to while training


@dataclass(frozen=True)
class Arch:
    """Architecture hyper-parameters; stored in checkpoints and the manifest.

    Attributes:
        scale: upscaling factor (2, 3 or 4).
        blocks: number of residual blocks.
        channels: feature width.
        tail: ``"shuffle"`` is the paper's upsampler (conv ch→ch·s², PixelShuffle, per ×2 step for ×4,
            then a conv ch→3 at HR resolution); ``"espcn"`` ends with one conv ch→3·s² at LR resolution straight
            into PixelShuffle, which is much cheaper in OpenCV where DepthToSpace does not scale with threads.
        res_scale: residual scaling inside blocks (EDSR uses 0.1 only for its wide 256-channel model).
        family: ``"edsr"`` (:class:`EDSR`) or ``"sesr"`` (:class:`srd.train.collapsible.SESR`: ``blocks``
            single 3×3 convs, each trained as a collapsible linear block; ESPCN tail, no ``res_scale``).
        expand: sesr only: the width each linear block is expanded to while training (collapsed away for
            inference).
    """

    scale: int
    blocks: int
    channels: int
    tail: str = "espcn"
    res_scale: float = 1.0
    family: str = "edsr"
    expand: int = 0

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"unknown family {self.family!r}; expected one of {FAMILIES}")
        if self.family == "sesr" and (self.tail != "espcn" or self.res_scale != 1.0 or self.expand < 1):
            raise ValueError("a sesr network has the espcn tail, no res_scale, and an expand width of at least 1")
        if self.family == "edsr" and self.expand:
            raise ValueError("expand is for sesr networks only")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class ResBlock(nn.Module):
    """conv–ReLU–conv with a scaled identity skip and no batch norm (EDSR's key simplification)."""

    def __init__(self, channels: int, res_scale: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.act(self.conv1(x)))
        if self.res_scale != 1.0:
            y = y * self.res_scale
        return x + y


def _upsampler(arch: Arch) -> nn.Sequential:
    ch = arch.channels
    if arch.tail == "espcn":
        return nn.Sequential(nn.Conv2d(ch, 3 * arch.scale**2, 3, padding=1), nn.PixelShuffle(arch.scale))
    if arch.tail != "shuffle":
        raise ValueError(f"unknown tail {arch.tail!r}; expected one of {TAILS}")
    steps = [2, 2] if arch.scale == 4 else [arch.scale]
    layers: list[nn.Module] = []
    for s in steps:
        layers += [nn.Conv2d(ch, ch * s * s, 3, padding=1), nn.PixelShuffle(s)]
    layers.append(nn.Conv2d(ch, 3, 3, padding=1))
    return nn.Sequential(*layers)


class Network(nn.Module):
    """What every family's training network has: its architecture, and the network export writes."""

    arch: Arch

    def inference(self) -> Network:
        """The network to export (itself, unless a family trains a different form of it)."""
        return self


class EDSR(Network):
    """head conv → residual blocks → body conv (+ global skip) → upsampler.

    Input and output are BGR, 0–255 minus :data:`DIV2K_MEAN_BGR`, NCHW.
    """

    def __init__(self, arch: Arch) -> None:
        super().__init__()
        self.arch = arch
        ch = arch.channels
        self.head = nn.Conv2d(3, ch, 3, padding=1)
        self.body = nn.Sequential(
            *[ResBlock(ch, arch.res_scale) for _ in range(arch.blocks)], nn.Conv2d(ch, ch, 3, padding=1)
        )
        self.tail = _upsampler(arch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.head(x)
        return self.tail(feat + self.body(feat))


def build_model(arch: Arch) -> Network:
    """The training network of ``arch``'s family."""
    if arch.family == "sesr":
        from srd.train.collapsible import SESR

        return SESR(arch)
    return EDSR(arch)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def load_body(model: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Copy every weight except the upsampler from another scale's checkpoint.

    Why: ×3/×4 train much faster starting from a ×2 body (EDSR paper §4.1); the tail's shapes differ per scale.

    Returns:
        Names of the tensors copied.

    Raises:
        ValueError: `state` lacks some of the body (another family's or size's weights): all of it or nothing,
            since a body copied in part (tensors whose names and shapes happen to match) is no start at all.
    """
    own = model.state_dict()
    body = [k for k in own if not k.startswith("tail.")]
    missing = [k for k in body if k not in state or state[k].shape != own[k].shape]
    if missing:
        raise ValueError(f"the weights lack {len(missing)} of this network's {len(body)} body tensors "
                         f"(e.g. {missing[0]}): another family or size")
    model.load_state_dict({k: state[k] for k in body}, strict=False)
    return body
