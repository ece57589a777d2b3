"""EMMA: the multi-task model of the MTL track (valence/arousal, 8 expressions, 12 action units).

An MAE-pretrained ViT with a two-layer head gives 8 expression and 12 AU logits. A frozen AffectNet DAN sees the same
input; its 8 expression scores joined with the ViT's 20 outputs feed the valence/arousal head.
Output layout: ``[VA(2), EXPR(8), AU(12)]``. Module names match the authors' released checkpoints
(``vit.*`` with ``vit.head.0/2.*``, ``cnn.*``, ``va_head.*``).

The DAN is frozen for good: its parameters never require gradients, it stays in eval mode whatever ``train()`` is
called with (the original left it in train mode and its BatchNorm statistics drifted), and it runs without autograd.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from models.dan import DAN
from models.vit import build_vit
from models.weights import constructor_arguments, extract_state_dict, load_exactly, read_checkpoint, strip_prefix
from utils.abaw import NUM_AU, NUM_EXPR
from utils.errors import UserError

VIT_HEAD_HIDDEN = 512  # reference: Linear(D, 512), ReLU, Linear(512, 20)
VA_HEAD_HIDDEN = 256  # reference: Linear(28, 256), ReLU, Linear(256, 2), no tanh


DAN_CHOICES = ('frozen', 'none')


class EMMA(nn.Module):
    """``dan='none'`` is the ablation without the DAN branch: the VA head reads the ViT's 20 outputs only (for data
    without an expression-pretrained DAN, such as the synthetic demo faces, where a random DAN's scores would be
    large noise)."""

    def __init__(self, vit_size: str = 'base', img_size: int = 224, drop_path: float = 0.1,
                 global_pool: bool = False, patch_size: int | None = None, patch_embed: str = 'linear',
                 dan: str = 'frozen', stem_blocks=None):
        super().__init__()
        if dan not in DAN_CHOICES:
            raise UserError(f'unknown DAN setting {dan!r}; choose one of {", ".join(DAN_CHOICES)}')
        self.config = dict(name='emma', vit_size=vit_size, img_size=img_size, drop_path=drop_path,
                           global_pool=global_pool, patch_size=patch_size, patch_embed=patch_embed)
        if dan != 'frozen':  # recorded only when it differs, so configs of the full model stay as they were
            self.config['dan'] = dan
        if stem_blocks is not None:  # likewise: absent means ResNet-18's blocks (or the patchify layer)
            self.config['stem_blocks'] = list(stem_blocks)
        self.vit = build_vit(vit_size, img_size, num_classes=0, drop_path=drop_path, global_pool=global_pool,
                             patch_size=patch_size, patch_embed=patch_embed, stem_blocks=stem_blocks)
        self.vit.head = nn.Sequential(nn.Linear(self.vit.embed_dim, VIT_HEAD_HIDDEN), nn.ReLU(),
                                      nn.Linear(VIT_HEAD_HIDDEN, NUM_EXPR + NUM_AU))
        self.vit.num_classes = NUM_EXPR + NUM_AU

        self.cnn = None
        if dan == 'frozen':
            self.cnn = DAN(num_class=NUM_EXPR)
            self.cnn.requires_grad_(False)
            self.cnn.eval()
            self.cnn.to(memory_format=torch.channels_last)  # faster convolutions; load_state_dict keeps the layout

        dan_width = NUM_EXPR if self.cnn is not None else 0
        self.va_head = nn.Sequential(nn.Linear(dan_width + NUM_EXPR + NUM_AU, VA_HEAD_HIDDEN), nn.ReLU(),
                                     nn.Linear(VA_HEAD_HIDDEN, 2))

    @classmethod
    def from_config(cls, config: dict) -> EMMA:
        return cls(**constructor_arguments(cls, config))

    def train(self, mode: bool = True) -> EMMA:
        super().train(mode)
        if self.cnn is not None:
            self.cnn.eval()  # the frozen DAN's BatchNorm must keep its AffectNet statistics
        return self

    def dan_expression_scores(self, x: Tensor) -> Tensor:
        """The frozen DAN's 8 expression logits, as a plain tensor that later layers can use in their graph."""
        # inference_mode is the cheapest; torch.compile traces no_grad more reliably
        no_autograd = torch.no_grad() if torch.compiler.is_compiling() else torch.inference_mode()
        with no_autograd:
            scores = self.cnn(x.contiguous(memory_format=torch.channels_last))[0]
        return scores.clone()  # a normal tensor: inference tensors cannot enter an autograd graph

    def forward(self, x: Tensor) -> Tensor:
        return self._outputs(x, self.vit(x))[0]

    def _outputs(self, x: Tensor, expr_au: Tensor) -> tuple[Tensor, Tensor | None]:
        """The output row [VA, EXPR, AU] from the ViT's 20 outputs, and the DAN's scores (None without a DAN)."""
        if self.cnn is None:
            dan_expr, va = None, self.va_head(expr_au)
        else:
            dan_expr = self.dan_expression_scores(x).to(expr_au.dtype)
            va = self.va_head(torch.cat([dan_expr, expr_au], dim=1))
        return torch.cat([va.to(expr_au.dtype), expr_au], dim=1), dan_expr

    def features(self, x: Tensor) -> dict[str, Tensor]:
        """Per-frame features for a temporal model: the ViT's pooled feature (``vit``), the output row (``heads``,
        exactly :meth:`forward`'s) and, with a DAN, its 8 expression scores (``dan``)."""
        pooled = self.vit.forward_head(self.vit.forward_features(x), pre_logits=True)
        outputs, dan_expr = self._outputs(x, self.vit.head(pooled))
        parts = {'vit': pooled, 'heads': outputs}
        if dan_expr is not None:
            parts['dan'] = dan_expr
        return parts


def load_emma_checkpoint(model: EMMA, path_or_obj, log=print) -> int:
    """Load an EMMA state dict: the authors' ``{'epoch', 'model'}`` files (DAN weights included) or this project's.

    Keys and shapes must match exactly (a ``module.`` prefix is stripped); returns the number of tensors loaded.
    """
    checkpoint, name = read_checkpoint(path_or_obj, 'EMMA checkpoint')
    state = strip_prefix(extract_state_dict(checkpoint, name, ('model', 'state_dict')), 'module.')
    loaded = load_exactly(model, state, name, f'EMMA (ViT {model.config["vit_size"]})')
    epoch = checkpoint.get('epoch') if isinstance(checkpoint, dict) else None
    log(f'EMMA checkpoint {name}' + (f' (epoch {epoch})' if epoch is not None else '') +
        f': loaded {loaded} tensors, DAN included')
    return loaded
