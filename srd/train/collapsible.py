"""SESR-style network: a plain stack of 3×3 convolutions that trains as a wider, linear over-parameterisation.

Each :class:`LinearBlock` is a k×k conv to ``expand`` channels followed by a 1×1 conv back, with nothing
non-linear between, so it is one k×k conv in disguise (Bhardwaj et al., "Collapsible Linear Blocks for
Super-Efficient Super Resolution", MLSys 2022). The wide form makes the optimisation easier; the product of the
two kernels is computed on every forward pass, so training runs the narrow convolution itself (the weights'
product is cheap) and inference runs exactly that narrow convolution, exported by :meth:`SESR.inference`.

Inference graph: 5×5 head conv, ``blocks`` × (3×3 conv with its identity folded in, PReLU), the head's output
added back (long skip), 5×5 conv to 3·s² channels, PixelShuffle: only Conv, PRelu, Add and DepthToSpace, which
both cv2.dnn engines run.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from srd.train.model import Arch, Network


class LinearBlock(nn.Module):
    """k×k conv (in → expand) then 1×1 conv (expand → out), collapsed to one k×k conv (in → out) when run.

    With ``identity``, the input is added to the output, folded into the collapsed kernel's centre tap.
    """

    def __init__(self, channels_in: int, channels_out: int, kernel: int, expand: int, identity: bool) -> None:
        super().__init__()
        if identity and channels_in != channels_out:
            raise ValueError("an identity skip needs as many output channels as input channels")
        self.expand = nn.Conv2d(channels_in, expand, kernel, padding=kernel // 2)
        self.squeeze = nn.Conv2d(expand, channels_out, 1)
        self.identity = identity
        self.kernel = kernel

    def collapsed(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The single convolution's weight and bias."""
        squeeze = self.squeeze.weight.flatten(1)  # (out, expand)
        weight = torch.einsum("oe,eihw->oihw", squeeze, self.expand.weight)
        assert self.expand.bias is not None and self.squeeze.bias is not None
        bias = squeeze @ self.expand.bias + self.squeeze.bias
        if self.identity:
            centre = self.kernel // 2
            eye = torch.eye(weight.shape[0], dtype=weight.dtype, device=weight.device)
            weight = weight + F.pad(eye[:, :, None, None], (centre, centre, centre, centre))
        return weight, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.collapsed()
        return F.conv2d(x, weight, bias, padding=self.kernel // 2)

    def to_conv(self) -> nn.Conv2d:
        """A plain Conv2d computing the same function."""
        conv = nn.Conv2d(self.expand.in_channels, self.squeeze.out_channels, self.kernel, padding=self.kernel // 2)
        with torch.no_grad():
            weight, bias = self.collapsed()
            conv.weight.copy_(weight)
            assert conv.bias is not None
            conv.bias.copy_(bias)
        return conv


class SESR(Network):
    """head → blocks (each a collapsible 3×3 conv with identity, then PReLU) → + head → tail conv → PixelShuffle.

    Input and output are BGR, 0–255 minus the DIV2K mean, NCHW, as for :class:`srd.train.model.EDSR`. The tail
    is ``tail.0`` (like EDSR's ESPCN tail), so another scale's run can start from this one's body.
    """

    def __init__(self, arch: Arch) -> None:
        super().__init__()
        self.arch = arch
        ch, expand = arch.channels, arch.expand
        self.head = LinearBlock(3, ch, 5, expand, identity=False)
        self.body = nn.ModuleList(LinearBlock(ch, ch, 3, expand, identity=True) for _ in range(arch.blocks))
        self.acts = nn.ModuleList(nn.PReLU(ch) for _ in range(arch.blocks))
        self.tail = nn.Sequential(LinearBlock(ch, 3 * arch.scale**2, 5, expand, identity=False),
                                  nn.PixelShuffle(arch.scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.head(x)
        y = feat
        for conv, act in zip(self.body, self.acts, strict=True):
            y = act(conv(y))
        return self.tail(feat + y)

    def inference(self) -> SESR:
        """A copy whose linear blocks are plain convolutions."""
        plain = copy.deepcopy(self)
        _replace_linear_blocks(plain)
        return plain


def _replace_linear_blocks(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, LinearBlock):
            setattr(module, name, child.to_conv())
        else:
            _replace_linear_blocks(child)
