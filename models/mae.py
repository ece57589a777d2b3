"""The masked autoencoder of He et al. (2022), "Masked Autoencoders Are Scalable Vision Learners", for pretraining
the ViT that EMMA and masked CoTEX fine-tune.

The encoder is the project's ViT (``models.vit``, timm's blocks) with fixed 2-D sin-cos position embeddings; it sees
only the patches a per-sample random mask keeps. A narrower decoder gets the encoded patches and a shared mask token at
every dropped position, each with its own fixed position embedding, and predicts the pixels of every patch; the loss is
the mean squared error over the dropped patches only, against pixels normalised per patch (``norm_pix_loss``) or raw.

Parameter and buffer names are those of facebookresearch/mae's ``MaskedAutoencoderViT`` (``patch_embed``, ``blocks``,
``norm``, ``cls_token``, ``pos_embed``, ``mask_token``, ``decoder_embed``, ``decoder_blocks``, ``decoder_norm``,
``decoder_pred``, ``decoder_pos_embed``), in the same order, so the official pretrain checkpoints load here and ours
load there, and ``models.vit.load_mae_weights`` initialises the fine-tuning ViTs from either.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from models.vit import MaskedViT, embed_kept_patches, kept_patch_count, vit_arguments
from models.weights import constructor_arguments
from utils.errors import UserError


def sincos_position_embedding(dim: int, grid: int, cls_token: bool = True) -> Tensor:
    """Fixed 2-D sin-cos embeddings of a ``grid`` x ``grid`` patch grid, row-major, (grid*grid [+1], dim).

    The first half of the channels encodes a patch's column, the second half its row, each as
    ``[sin(p * w_k), cos(p * w_k)]`` with ``w_k = 10000 ** (-k / (dim / 4))``, k = 0 .. dim/4 - 1 (MAE's layout);
    the class token's row is zeros.
    """
    if dim % 4:
        raise UserError(f'sin-cos position embeddings need a width divisible by 4, got {dim}')
    quarter = dim // 4
    frequencies = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                                indexing='ij')

    def encode(positions: Tensor) -> Tensor:
        angles = positions.reshape(-1, 1) * frequencies
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    table = torch.cat([encode(cols), encode(rows)], dim=1)
    if cls_token:
        table = torch.cat([torch.zeros(1, dim, dtype=torch.float64), table])
    return table.float()


def patchify(images: Tensor, patch: int) -> Tensor:
    """(B, 3, H, W) -> (B, L, patch * patch * 3): patches row-major, each patch's pixels row-major with the channels
    last (MAE's order, which ``decoder_pred``'s outputs follow)."""
    batch, channels, height, width = images.shape
    rows, cols = height // patch, width // patch
    x = images.reshape(batch, channels, rows, patch, cols, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(batch, rows * cols, patch * patch * channels)


def unpatchify(patches: Tensor, patch: int, channels: int = 3) -> Tensor:
    """The inverse of :func:`patchify` for a square grid."""
    batch, count, _ = patches.shape
    side = math.isqrt(count)
    x = patches.reshape(batch, side, side, patch, patch, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(batch, channels, side * patch, side * patch)


def normalise_patches(patches: Tensor, eps: float = 1e-6) -> Tensor:
    """Each patch's pixels to zero mean and unit variance (MAE's ``norm_pix_loss`` target; unbiased variance)."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return (patches - mean) / (var + eps) ** 0.5


class MAE(MaskedViT):
    """MAE encoder (the ViT of ``vit_size``) and decoder. ``forward(images, mask_ratio, noise)`` returns
    ``(per-sample loss, predicted patches, mask)``; the mask is 1 on dropped patches."""

    def __init__(self, vit_size: str = 'base', img_size: int = 224, patch_size: int | None = None,
                 decoder_dim: int = 512, decoder_depth: int = 8, decoder_heads: int = 16, norm_pix_loss: bool = True):
        super().__init__(**vit_arguments(vit_size, img_size, num_classes=0, drop_path=0.0, global_pool=False,
                                         patch_size=patch_size))
        if img_size % self.patch:
            raise UserError(f'image size {img_size} is not a multiple of the patch size {self.patch}: MAE '
                            f'reconstructs whole patches')
        if decoder_dim % decoder_heads:
            raise UserError(f'--decoder-dim {decoder_dim} is not divisible by --decoder-heads {decoder_heads}')
        self.config = dict(name='mae', vit_size=vit_size, img_size=img_size, patch_size=patch_size,
                           decoder_dim=decoder_dim, decoder_depth=decoder_depth, decoder_heads=decoder_heads,
                           norm_pix_loss=norm_pix_loss)
        self.norm_pix_loss = norm_pix_loss
        num_patches = self.patch_embed.num_patches
        self.pos_embed.requires_grad_(False)  # fixed sin-cos, as MAE
        self.decoder_embed = nn.Linear(self.embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, decoder_dim), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(
            Block(decoder_dim, decoder_heads, mlp_ratio=4.0, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6))
            for _ in range(decoder_depth))
        self.decoder_norm = partial(nn.LayerNorm, eps=1e-6)(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, self.patch ** 2 * 3)
        self.initialize_weights()

    @property
    def patch(self) -> int:
        return self.patch_embed.patch_size[0]

    @classmethod
    def from_config(cls, config: dict) -> MAE:
        return cls(**constructor_arguments(cls, config))

    def initialize_weights(self) -> None:
        """MAE's initialisation: sin-cos position tables, Xavier-uniform linear layers and patchify kernel (as a
        linear map), normal(0.02) class and mask tokens, unit LayerNorms."""
        side = self.patch_embed.grid_size[0]
        with torch.no_grad():
            self.pos_embed.copy_(sincos_position_embedding(self.embed_dim, side)[None])
            self.decoder_pos_embed.copy_(sincos_position_embedding(self.decoder_pos_embed.shape[-1], side)[None])
            kernel = self.patch_embed.proj.weight
            nn.init.xavier_uniform_(kernel.view(kernel.shape[0], -1))
            nn.init.zeros_(self.patch_embed.proj.bias)
            nn.init.normal_(self.cls_token, std=0.02)
            nn.init.normal_(self.mask_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def no_weight_decay(self) -> set[str]:
        return {'cls_token', 'mask_token', 'pos_embed', 'decoder_pos_embed'}

    def kept_count(self, mask_ratio: float) -> int:
        return kept_patch_count(self.patch_embed.num_patches, mask_ratio)

    def encode(self, images: Tensor, mask_ratio: float, noise: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The encoder over the kept patches: ``(tokens (B, 1 + keep, D), order (B, L))`` (see
        :func:`models.vit.keep_random_patches`)."""
        kept, order = embed_kept_patches(self.patch_embed, images, self.pos_embed[:, 1:].to(images.dtype), mask_ratio,
                                         noise)
        cls_token = (self.cls_token + self.pos_embed[:, :1]).expand(kept.shape[0], -1, -1)
        tokens = self.blocks(torch.cat([cls_token.to(kept.dtype), kept], dim=1))
        return self.norm(tokens), order

    def features(self, images: Tensor) -> dict[str, Tensor]:
        """Per-frame features for a temporal model: the encoder over every patch, its normalised patch tokens
        averaged (``vit``; the pooling of MAE's fine-tuning, which saw no labels)."""
        tokens = self.patch_embed(images) + self.pos_embed[:, 1:].to(images.dtype)
        cls_token = (self.cls_token + self.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)
        tokens = self.norm(self.blocks(torch.cat([cls_token.to(tokens.dtype), tokens], dim=1)))
        return {'vit': tokens[:, 1:].mean(dim=1)}

    def decode(self, tokens: Tensor, order: Tensor) -> Tensor:
        """Predicted pixels of every patch, (B, L, patch * patch * 3), from the encoded kept patches."""
        x = self.decoder_embed(tokens)
        batch, width = x.shape[0], x.shape[-1]
        num_patches = order.shape[1]
        dropped = self.mask_token.to(x.dtype).expand(batch, num_patches - (x.shape[1] - 1), -1)
        shuffled = torch.cat([x[:, 1:], dropped], dim=1)  # kept patches first, in ``order``
        grid = torch.empty_like(shuffled).scatter_(1, order.unsqueeze(-1).expand(-1, -1, width), shuffled)
        x = torch.cat([x[:, :1], grid], dim=1) + self.decoder_pos_embed.to(x.dtype)
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def mask_of(self, order: Tensor, keep: int) -> Tensor:
        """(B, L) float mask from a masking order: 1 on dropped patches, 0 on kept ones."""
        mask = torch.ones(order.shape, device=order.device)
        return mask.scatter_(1, order[:, :keep], 0.0)

    def target(self, images: Tensor) -> Tensor:
        patches = patchify(images.float(), self.patch)
        return normalise_patches(patches) if self.norm_pix_loss else patches

    def forward(self, images: Tensor, mask_ratio: float = 0.75, noise: Tensor | None = None):
        if not 0.0 < mask_ratio < 1.0:
            raise UserError(f'MAE mask ratio must be in (0, 1), got {mask_ratio}')
        tokens, order = self.encode(images, mask_ratio, noise)
        predicted = self.decode(tokens, order).float()
        mask = self.mask_of(order, tokens.shape[1] - 1)
        per_patch = (predicted - self.target(images)).pow(2).mean(dim=-1)
        per_sample = (per_patch * mask).sum(dim=1) / mask.sum(dim=1)
        return per_sample, predicted, mask
