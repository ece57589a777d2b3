"""The MAE-style Vision Transformer backbone: timm's ViT with patch masking for training and MAE weight loading.

The backbone is timm's ``VisionTransformer`` (fused attention, drop path) configured as in MAE: LayerNorm eps 1e-6,
qkv bias, class-token pooling (or average pooling with ``fc_norm``). Its blocks skip the work of the residual branches
that drop path drops (:class:`SampleDropBlock`). ``forward(x, mask_ratio)`` keeps a random subset of patch tokens per
sample in training, as masked CoTEX does; in eval, or at ratio 0, it is timm's forward.
"""

from __future__ import annotations

from functools import partial

import timm
import torch
import torch.nn.functional as F
from timm.layers import DropPath, PatchEmbed, resample_abs_pos_embed, trunc_normal_
from timm.models import checkpoint_seq
from timm.models.vision_transformer import Block, VisionTransformer
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, ResNet

from models.weights import compare_keys, describe_mismatch, extract_state_dict, read_checkpoint, strip_prefix
from utils.errors import UserError

# MAE / ViT sizes; 'nano' is ours, small enough for CPU demos and tests.
VIT_PRESETS = {
    'nano': dict(patch_size=16, embed_dim=128, depth=4, num_heads=4),
    'tiny': dict(patch_size=16, embed_dim=192, depth=12, num_heads=3),
    'small': dict(patch_size=16, embed_dim=384, depth=12, num_heads=6),
    'base': dict(patch_size=16, embed_dim=768, depth=12, num_heads=12),
    'large': dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16),
    'huge': dict(patch_size=14, embed_dim=1280, depth=32, num_heads=16),
}

# Keys of MAE pretrain checkpoints that belong to the decoder or the masking, never to the encoder we fine-tune.
_PRETRAIN_ONLY = ('mask_token', 'decoder_')
# A fine-tuning model brings its own head; fc_norm exists only with average pooling, which MAE checkpoints lack.
_MAY_BE_MISSING = ('head.', 'fc_norm.')


def kept_patch_count(num_patches: int, mask_ratio: float) -> int:
    """Number of patch tokens a masked forward keeps, as in MAE: ``int(L * (1 - mask_ratio))``."""
    return int(num_patches * (1 - mask_ratio))


def keep_random_patches(patches: Tensor, mask_ratio: float, noise: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per-sample random masking as in MAE: each sample keeps its ``kept_patch_count`` tokens of smallest ``noise``
    (uniform per sample and token; drawn here when not given). Returns ``(kept tokens, order)``: ``order`` (B, L) lists
    each sample's token indices kept first, so ``order[:, :keep]`` are the kept ones, in the order they come."""
    batch, num_patches, dim = patches.shape
    keep = kept_patch_count(num_patches, mask_ratio)
    if keep < 1:
        raise UserError(f'mask ratio {mask_ratio} keeps no patch token of {num_patches}; use a smaller ratio')
    if noise is None:
        noise = torch.rand(batch, num_patches, device=patches.device)
    order = noise.argsort(dim=1)
    kept = patches.gather(1, order[:, :keep].unsqueeze(-1).expand(-1, -1, dim))
    return kept, order


class LinearPatchEmbed(PatchEmbed):
    """timm's patchify layer (the same ``proj`` convolution, parameters and state-dict keys), in training computed as
    what it is, one linear map of each patch's pixels: a matrix product instead of a strided convolution, whose weight
    gradient is several times slower on a CPU. :meth:`pixels` and :meth:`project` split it so that a masked forward
    projects only the patches it keeps (:func:`embed_kept_patches`).

    Without gradients (evaluation) it is timm's convolution, whose result for an image does not depend on the other
    images of its batch, as exact evaluation under any batch size or number of processes needs (a matrix product's
    rounding can depend on its row count); with another ``proj`` (the hybrid stem) it is timm's layer."""

    @property
    def patchify(self) -> bool:
        """Whether the projection runs as a matrix product now: a plain patchify convolution, gradients on."""
        proj = self.proj
        return (torch.is_grad_enabled() and type(proj) is nn.Conv2d
                and tuple(proj.kernel_size) == tuple(proj.stride) == tuple(self.patch_size)
                and tuple(proj.padding) == (0, 0) and tuple(proj.dilation) == (1, 1) and proj.groups == 1
                and self.flatten and not self.dynamic_img_pad)

    def forward(self, x: Tensor) -> Tensor:
        if not self.patchify:
            return super().forward(x)
        return self.project(self.pixels(x))

    def pixels(self, x: Tensor) -> Tensor:
        """(B, C, H, W) images -> (B, L, C * p * p): patches row-major, each flattened as the kernel is (C, p, p)."""
        batch, channels, height, width = x.shape
        if self.img_size is not None and self.strict_img_size and (height, width) != tuple(self.img_size):
            raise UserError(f'input images are {height} x {width}; this ViT takes {self.img_size[0]} x '
                            f'{self.img_size[1]}')
        (ph, pw), (rows, cols) = self.patch_size, (height // self.patch_size[0], width // self.patch_size[1])
        x = x[..., :rows * ph, :cols * pw].reshape(batch, channels, rows, ph, cols, pw)
        return x.permute(0, 2, 4, 1, 3, 5).reshape(batch, rows * cols, channels * ph * pw)

    def project(self, pixels: Tensor) -> Tensor:
        return self.norm(F.linear(pixels, self.proj.weight.flatten(1), self.proj.bias))


def embed_kept_patches(patch_embed: nn.Module, images: Tensor, pos_embed: Tensor, mask_ratio: float,
                       noise: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Patch tokens plus their position embeddings ``pos_embed`` (1, L, D), a random ``1 - mask_ratio`` of them kept
    per sample: :func:`keep_random_patches`'s ``(kept tokens, order)``. The patchify layer projects only the kept
    patches (a quarter of the work at mask 0.75); the tokens are the same."""
    if not (isinstance(patch_embed, LinearPatchEmbed) and patch_embed.patchify):
        return keep_random_patches(patch_embed(images) + pos_embed, mask_ratio, noise)
    pixels, order = keep_random_patches(patch_embed.pixels(images), mask_ratio, noise)
    kept = order[:, :pixels.shape[1]]
    pos = pos_embed.expand(kept.shape[0], -1, -1).gather(1, kept.unsqueeze(-1).expand(-1, -1, pos_embed.shape[-1]))
    return patch_embed.project(pixels) + pos, order


def kept_samples(batch_size: int, drop_rate: float) -> Tensor:
    """Indices of the samples whose residual branch survives drop path: each independently with probability
    ``1 - drop_rate``. Drawn by the CPU generator, so a GPU step waits for nothing (the run seeds it per rank and its
    checkpoints keep its state)."""
    return (torch.rand(batch_size) >= drop_rate).nonzero().squeeze(1)


def add_kept_branch(x: Tensor, branch, drop_rate: float) -> Tensor:
    """``x`` plus drop path of ``branch(x)``, computing the branch for the kept samples only.

    The same distribution as timm's ``DropPath``: a sample's branch is kept with probability ``1 - drop_rate`` and then
    scaled by ``1 / (1 - drop_rate)``; a dropped sample's branch is neither computed nor differentiated. With every
    sample dropped the branch still runs on an empty batch, so its parameters get (zero) gradients, as DDP expects.
    """
    kept = kept_samples(x.shape[0], drop_rate)
    scale = 1.0 / (1.0 - drop_rate)
    if kept.numel() == x.shape[0]:
        return torch.add(x, branch(x).to(x.dtype), alpha=scale)
    kept = kept.to(x.device, non_blocking=True)
    return x.index_add(0, kept, branch(x.index_select(0, kept)).to(x.dtype), alpha=scale)


class SampleDropBlock(Block):
    """timm's pre-norm ViT block whose drop path skips the dropped samples' attention and MLP instead of zeroing
    them: at the 0.1 drop path of fine-tuning (0 to 0.1 over the blocks), 5% of a ViT-B's block work on average.

    Weights, evaluation and the compiled graph (torch.compile traces timm's forward) are timm's.
    """

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        drop_rate = self.drop_path1.drop_prob if isinstance(self.drop_path1, DropPath) else 0.0
        if (not self.training or drop_rate == 0.0 or attn_mask is not None or is_causal
                or torch.compiler.is_compiling()):
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        x = add_kept_branch(x, lambda h: self.ls1(self.attn(self.norm1(h))), drop_rate)
        return add_kept_branch(x, lambda h: self.ls2(self.mlp(self.norm2(h))), drop_rate)


class MaskedViT(VisionTransformer):
    """timm ViT whose training forward can drop a random subset of patch tokens per sample."""

    def forward(self, x: Tensor, mask_ratio: float = 0.0) -> Tensor:
        if not 0.0 <= mask_ratio < 1.0:
            raise UserError(f'mask ratio must be in [0, 1), got {mask_ratio}')
        if not self.training or mask_ratio == 0.0:
            return super().forward(x)
        return self.forward_head(self.forward_masked_features(x, mask_ratio))

    def forward_masked_features(self, x: Tensor, mask_ratio: float) -> Tensor:
        """Patch tokens plus their position embeddings, a random ``1 - mask_ratio`` of them kept, then the blocks."""
        patches, _ = embed_kept_patches(self.patch_embed, x, self.pos_embed[:, self.num_prefix_tokens:], mask_ratio)
        cls_token = (self.cls_token + self.pos_embed[:, :self.num_prefix_tokens]).expand(patches.shape[0], -1, -1)
        tokens = self.pos_drop(torch.cat([cls_token.to(patches.dtype), patches], dim=1))
        tokens = self.norm_pre(self.patch_drop(tokens))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            tokens = checkpoint_seq(self.blocks, tokens)
        else:
            tokens = self.blocks(tokens)
        return self.norm(tokens)


PATCH_EMBEDS = ('linear', 'hybrid')
_HYBRID_STAGES = {8: 2, 16: 3, 32: 4}  # patch size -> ResNet-18 stages whose total stride it is
RESNET18_BLOCKS = 2  # residual blocks per ResNet-18 stage


class HybridStem(nn.Sequential):
    """The convolutional patch embedding of :func:`hybrid_stem`; its BatchNorm layers are the model's only statistics
    of the input domain, which ``engine.evaluate.adapt_batchnorm`` can re-estimate on another domain's images."""


def stem_block_counts(patch_size: int, blocks=None) -> tuple[int, ...]:
    """Residual blocks in each stage of the hybrid patch embedding for ``patch_size``: ``blocks`` None is
    ResNet-18's two per stage; one number applies to every stage; otherwise one number per stage."""
    if patch_size not in _HYBRID_STAGES:
        raise UserError(f'the hybrid patch embedding needs patch size 8, 16 or 32 (a ResNet stride), got {patch_size}')
    stages = _HYBRID_STAGES[patch_size]
    counts = [RESNET18_BLOCKS] if blocks is None else [int(count) for count in blocks]
    if len(counts) == 1:
        counts = counts * stages
    if len(counts) != stages or min(counts) < 1:
        raise UserError(f'the hybrid patch embedding at patch size {patch_size} has {stages} ResNet stages: give '
                        f'one block count (at least 1) for all of them or one per stage, got {list(blocks)}')
    return tuple(counts)


def hybrid_stem(patch_size: int, embed_dim: int, blocks=None) -> HybridStem:
    """The ViT paper's hybrid patch embedding (Dosovitskiy et al., 2021, section 3.1): the first stages of a
    ResNet-18 (stem, then as many stages as make the patch size's stride), whose feature map's cells are the tokens,
    projected to the embedding width by a 1x1 convolution. ``blocks``: residual blocks per stage
    (:func:`stem_block_counts`; default ResNet-18's two).

    Meant for training from scratch, where the convolutions' locality makes a small ViT learn in far fewer steps;
    MAE weights belong to the patchify layer, so they cannot initialise it.
    """
    counts = stem_block_counts(patch_size, blocks)
    stages = len(counts)
    # The unused later stages are built too, so that the default draws the same initial weights as resnet18().
    trunk = ResNet(BasicBlock, list(counts) + [RESNET18_BLOCKS] * (4 - stages))
    layers = [trunk.conv1, trunk.bn1, trunk.relu, trunk.maxpool] + [getattr(trunk, f'layer{i}') for i in
                                                                     range(1, stages + 1)]
    # Channels-last, the layout of the batches it sees: a convolution's weight gradient comes in its input's layout,
    # and under DDP a parameter of another layout costs a copy of its gradient at every step.
    stem = HybridStem(*layers, nn.Conv2d(64 << (stages - 1), embed_dim, kernel_size=1))
    return stem.to(memory_format=torch.channels_last)


def vit_arguments(size: str = 'base', img_size: int = 224, num_classes: int = 0, drop_path: float = 0.1,
                  global_pool: bool = False, patch_size: int | None = None) -> dict:
    """timm ``VisionTransformer`` arguments of a preset size, configured as MAE's ViTs (LayerNorm eps 1e-6, qkv
    bias, MLP ratio 4); a size, patch or image size that cannot make a ViT is a UserError."""
    if size not in VIT_PRESETS:
        raise UserError(f'unknown ViT size {size!r}; choose one of {", ".join(VIT_PRESETS)}')
    preset = dict(VIT_PRESETS[size])
    if patch_size is not None:
        preset['patch_size'] = patch_size
    if img_size < preset['patch_size']:
        raise UserError(f'image size {img_size} is smaller than the ViT patch size {preset["patch_size"]}')
    return dict(img_size=img_size, num_classes=num_classes, drop_path_rate=drop_path, mlp_ratio=4.0, qkv_bias=True,
                global_pool='avg' if global_pool else 'token', norm_layer=partial(nn.LayerNorm, eps=1e-6),
                embed_layer=LinearPatchEmbed, block_fn=SampleDropBlock, **preset)


def build_vit(size: str = 'base', img_size: int = 224, num_classes: int = 0, drop_path: float = 0.1,
              global_pool: bool = False, patch_size: int | None = None, patch_embed: str = 'linear',
              stem_blocks=None) -> MaskedViT:
    """A ViT of a preset size; ``num_classes=0`` leaves no head (callers attach their own).

    ``patch_embed='hybrid'`` swaps the patchify layer for ResNet-18 stages (:func:`hybrid_stem`) of ``stem_blocks``
    residual blocks each (None: ResNet-18's two); the patchify layer takes no ``stem_blocks``.
    """
    arguments = vit_arguments(size, img_size, num_classes, drop_path, global_pool, patch_size)
    if patch_embed not in PATCH_EMBEDS:
        raise UserError(f'unknown patch embedding {patch_embed!r}; choose one of {", ".join(PATCH_EMBEDS)}')
    if stem_blocks is not None and patch_embed != 'hybrid':
        raise UserError('stem blocks are a setting of the hybrid patch embedding; the patchify layer has none')
    vit = MaskedViT(**arguments)
    if patch_embed == 'hybrid':
        vit.patch_embed.proj = hybrid_stem(arguments['patch_size'], vit.embed_dim, stem_blocks)
    return vit


def read_mae_state_dict(source) -> tuple[dict[str, Tensor], str]:
    """(encoder state dict, name) of an MAE checkpoint path, a loaded checkpoint/state dict, or ``timm:<model>``."""
    if isinstance(source, str) and source.startswith('timm:'):
        return _timm_hub_state_dict(source[len('timm:'):]), source
    checkpoint, name = read_checkpoint(source, 'MAE checkpoint')
    state = strip_prefix(extract_state_dict(checkpoint, name, ('model', 'state_dict')), 'module.')
    return state, name


def _timm_hub_state_dict(model_name: str) -> dict[str, Tensor]:
    try:  # downloads: only on this explicit request, never in tests
        hub_model = timm.create_model(model_name, pretrained=True, num_classes=0, global_pool='token')
    except Exception as error:
        raise UserError(f'cannot get timm weights {model_name!r} ({error}); pass a checkpoint file instead') from None
    return hub_model.state_dict()


def load_mae_weights(vit: MaskedViT, source, log=print, name: str | None = None) -> dict:
    """Initialise ``vit`` from MAE pretrain/finetune weights or a timm state dict and report what was loaded.

    Decoder and mask-token keys are ignored, the head and ``fc_norm`` are taken only where their shapes fit, position
    embeddings are resampled to this model's grid. Any other missing key or any shape mismatch is a UserError.
    Returns ``{'source', 'loaded', 'not_loaded', 'ignored', 'pos_embed_resampled'}``.
    """
    if isinstance(vit.patch_embed.proj, nn.Sequential):
        raise UserError('MAE weights fit the patchify layer, not the hybrid patch embedding; '
                        'use --patch-embed linear with --mae-ckpt')
    state, source_name = read_mae_state_dict(source)
    source_name = name or source_name
    own = vit.state_dict()

    ignored = [key for key in state if key.startswith(_PRETRAIN_ONLY)]
    # heads and norms that this model lacks or shapes differently (another task's head, average-pool fc_norm,
    # or the final norm that average pooling replaces) are dropped rather than loaded
    ignored += [key for key in state if key.startswith(('head.', 'fc_norm.')) and (
        key not in own or own[key].shape != state[key].shape)]
    ignored += [key for key in state if key.startswith('norm.') and key not in own]
    state = {key: value for key, value in state.items() if key not in ignored}

    resampled = None
    if 'pos_embed' in state and state['pos_embed'].shape != own['pos_embed'].shape:
        # a pos_embed that cannot be resampled (other width, not square) stays and is reported as a mismatch
        state['pos_embed'], resampled = _resample_pos_embed(vit, state['pos_embed'])

    missing, unexpected, mismatched = compare_keys(own, state, lambda key: key.startswith(_MAY_BE_MISSING))
    if missing or mismatched:
        mismatch = describe_mismatch(missing, unexpected, mismatched)
        raise UserError(f'MAE checkpoint {source_name} does not fit this ViT: {mismatch}; '
                        'check --vit size, --img-size and pooling')
    ignored += unexpected
    state = {key: value for key, value in state.items() if key in own}
    vit.load_state_dict(state, strict=False)

    not_loaded = [key for key in own if key not in state and not key.endswith('num_batches_tracked')]
    if isinstance(vit.head, nn.Linear) and 'head.weight' not in state:
        # MAE fine-tuning starts a fresh linear head near zero
        with torch.no_grad():
            trunc_normal_(vit.head.weight, std=2e-5)
            vit.head.bias.zero_()

    report = {'source': source_name, 'loaded': len(state), 'not_loaded': not_loaded, 'ignored': ignored,
              'pos_embed_resampled': resampled}
    line = f'MAE weights from {source_name}: loaded {len(state)} tensors'
    if not_loaded:
        line += f'; new (not in checkpoint): {", ".join(not_loaded)}'
    if ignored:
        decoder = sum(key.startswith('decoder_') for key in ignored)
        others = [key for key in ignored if not key.startswith('decoder_')]
        line += '; ignored: ' + ', '.join(others + ([f'{decoder} decoder keys'] if decoder else []))
    if resampled:
        (old_h, old_w), (new_h, new_w) = resampled
        line += f'; pos_embed resampled {old_h}x{old_w} -> {new_h}x{new_w}'
    log(line)
    return report


def _resample_pos_embed(vit: MaskedViT, pos_embed: Tensor):
    """Bicubic resampling of the patch position embeddings to ``vit``'s grid (class token kept as is).

    Returns ``(pos_embed, (old_grid, new_grid))``, or the input and None when it is not a square grid of our width.
    """
    prefix = vit.num_prefix_tokens
    old_patches = pos_embed.shape[1] - prefix if pos_embed.ndim == 3 else -1
    old_side = int(round(max(old_patches, 0) ** 0.5))
    if old_patches < 1 or old_side * old_side != old_patches or pos_embed.shape[2] != vit.embed_dim:
        return pos_embed, None
    new_grid = list(vit.patch_embed.grid_size)
    # antialias off and align_corners False: the interpolation MAE's own fine-tuning code uses
    resampled = resample_abs_pos_embed(pos_embed, new_size=new_grid, old_size=[old_side, old_side],
                                       num_prefix_tokens=prefix, interpolation='bicubic', antialias=False)
    return resampled, ((old_side, old_side), tuple(new_grid))
