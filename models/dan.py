"""DAN, the AffectNet-trained expression CNN that EMMA uses as a frozen second opinion.

A ResNet-18 trunk (torchvision, no downloaded weights) followed by four cross-attention heads (spatial then channel
attention), a log-softmax across heads, an 8-way linear layer and a BatchNorm on the logits. Module names follow the
released AffectNet checkpoint (``features.*``, ``cat_head{i}.sa.*``/``.ca.*``, ``fc.*``, ``bn.*``), so it loads as is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import resnet18

from models.weights import extract_state_dict, load_exactly, read_checkpoint, strip_prefix

TRUNK_CHANNELS = 512  # ResNet-18's last stage


class SpatialAttention(nn.Module):
    """Reweights every position of the feature map by a learned multi-shape (3x3, 1x3, 3x1) response."""

    def __init__(self, channels: int = TRUNK_CHANNELS, reduced: int = 256):
        super().__init__()
        self.conv1x1 = nn.Sequential(nn.Conv2d(channels, reduced, kernel_size=1), nn.BatchNorm2d(reduced))
        self.conv_3x3 = nn.Sequential(nn.Conv2d(reduced, channels, kernel_size=3, padding=1),
                                      nn.BatchNorm2d(channels))
        self.conv_1x3 = nn.Sequential(nn.Conv2d(reduced, channels, kernel_size=(1, 3), padding=(0, 1)),
                                      nn.BatchNorm2d(channels))
        self.conv_3x1 = nn.Sequential(nn.Conv2d(reduced, channels, kernel_size=(3, 1), padding=(1, 0)),
                                      nn.BatchNorm2d(channels))

    def forward(self, features: Tensor) -> Tensor:
        reduced = self.conv1x1(features)
        response = F.relu(self.conv_3x3(reduced) + self.conv_1x3(reduced) + self.conv_3x1(reduced))
        return features * response.sum(dim=1, keepdim=True)


class ChannelAttention(nn.Module):
    """Pools the attended map to a vector and gates its channels (squeeze-and-excitation style)."""

    def __init__(self, channels: int = TRUNK_CHANNELS, hidden: int = 32):
        super().__init__()
        # indices 0, 1, 3 carry weights: the checkpoint's attention.{0,1,3}.* keys
        self.attention = nn.Sequential(nn.Linear(channels, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                                       nn.Linear(hidden, channels), nn.Sigmoid())

    def forward(self, attended: Tensor) -> Tensor:
        pooled = attended.mean(dim=(2, 3))
        return pooled * self.attention(pooled)


class CrossAttentionHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.sa = SpatialAttention()
        self.ca = ChannelAttention()
        self._init_weights()

    def _init_weights(self):
        # DAN's initialisation; only matters when training a DAN from scratch
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode='fan_out')
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.001)
                nn.init.zeros_(module.bias)

    def forward(self, features: Tensor) -> Tensor:
        return self.ca(self.sa(features))


class DAN(nn.Module):
    """Distract-your-Attention network. ``forward`` returns ``(logits, trunk feature map, per-head vectors)``."""

    def __init__(self, num_class: int = 8, num_head: int = 4):
        super().__init__()
        trunk = resnet18(weights=None)
        self.features = nn.Sequential(*list(trunk.children())[:-2])  # drop avgpool and fc
        self.num_head = num_head
        for index in range(num_head):
            setattr(self, f'cat_head{index}', CrossAttentionHead())
        self.fc = nn.Linear(TRUNK_CHANNELS, num_class)
        self.bn = nn.BatchNorm1d(num_class)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        feature_map = self.features(x)
        heads = torch.stack([getattr(self, f'cat_head{index}')(feature_map) for index in range(self.num_head)], dim=1)
        if self.num_head > 1:
            # heads compete per feature: a log-softmax across the head axis
            heads = F.log_softmax(heads, dim=1)
        logits = self.bn(self.fc(heads.sum(dim=1)))
        return logits, feature_map, heads


def load_dan_weights(dan: DAN, path_or_sd, log=print) -> int:
    """Load an AffectNet DAN checkpoint (``{'model_state_dict': ...}`` or a plain state dict); exact keys required."""
    checkpoint, name = read_checkpoint(path_or_sd, 'DAN checkpoint')
    state = strip_prefix(extract_state_dict(checkpoint, name, ('model_state_dict', 'state_dict', 'model')), 'module.')
    loaded = load_exactly(dan, state, name, 'DAN')
    log(f'DAN weights from {name}: loaded {loaded} tensors')
    return loaded
