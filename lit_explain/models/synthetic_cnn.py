"""A small ResNet-style CNN for the synthetic concept world, fast to train on a CPU.

Module names follow torchvision's ResNet (``conv1``, ``bn1``, ``relu``, ``maxpool``, ``layer1`` ..
``layer4`` of BasicBlocks with ``conv1``/``bn1``/``conv2``/``bn2``/``downsample``, ``avgpool``, ``fc``),
so layer paths such as ``layer4`` or ``layer3.0.conv2`` and head replacements of ``fc`` (LaViSE) work the
same as on a torchvision ResNet.

Defaults (chosen by measurement: the smallest net that reaches >= 90 % validation accuracy on the default
world within the two-minute CPU budget): width 12, one BasicBlock per stage, strides (1, 2, 1, 1).
Spatial sizes for a 64 x 64 input: conv1 (stride 2) 32 x 32, maxpool 16 x 16, layer1 16 x 16,
layer2 8 x 8, layer3 8 x 8, layer4 8 x 8 (so the dissected layer keeps an 8 x 8 grid, mask_size / 4 for
the world's 32 x 32 masks). Channels: width, width, 2 width, 4 width, 8 width (96 units in layer4).
About 11 M multiply-adds per 64 x 64 image.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["synthetic_cnn", "SyntheticCNN", "BasicBlock"]


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 conv-BN) shortcut, as in torchvision's ResNet."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class SyntheticCNN(nn.Module):
    """ResNet-like classifier; see the module docstring for names and sizes.

    Args:
        num_classes: classifier outputs.
        width: channels of conv1/layer1 (layer2..4 have 2x, 4x, 8x).
        blocks: BasicBlocks per stage.
        strides: stride of the first block of layer1..layer4.
        maxpool: 3x3 stride-2 max pooling after the stem (else an identity named ``maxpool``).
        stem_stride: stride of conv1.
    """

    def __init__(self, num_classes: int = 8, width: int = 12, blocks: int = 1,
                 strides: tuple[int, int, int, int] = (1, 2, 1, 1), maxpool: bool = True,
                 stem_stride: int = 2) -> None:
        super().__init__()
        w = int(width)
        s1, s2, s3, s4 = (int(s) for s in strides)
        self.conv1 = nn.Conv2d(3, w, 3, int(stem_stride), 1, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1) if maxpool else nn.Identity()
        self.layer1 = self._stage(w, w, s1, blocks)
        self.layer2 = self._stage(w, 2 * w, s2, blocks)
        self.layer3 = self._stage(2 * w, 4 * w, s3, blocks)
        self.layer4 = self._stage(4 * w, 8 * w, s4, blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8 * w, int(num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @staticmethod
    def _stage(in_ch: int, out_ch: int, stride: int, blocks: int) -> nn.Sequential:
        layers = [BasicBlock(in_ch, out_ch, stride)]
        layers += [BasicBlock(out_ch, out_ch, 1) for _ in range(int(blocks) - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


def synthetic_cnn(num_classes: int = 8, width: int = 12, blocks: int = 1,
                  strides: tuple[int, int, int, int] = (1, 2, 1, 1), maxpool: bool = True,
                  stem_stride: int = 2) -> SyntheticCNN:
    """Factory for ``python:lit_explain.models.synthetic_cnn:synthetic_cnn`` (see :class:`SyntheticCNN`)."""
    return SyntheticCNN(num_classes=num_classes, width=width, blocks=blocks, strides=strides, maxpool=maxpool,
                        stem_stride=stem_stride)
