"""Training losses: the EMMA multi-task loss and the masked-CoTEX loss (ABAW4.md).

Every loss scores only the labelled entries (missing codes: valence/arousal -5, expression -1, AU -1). Labelled
entries are selected rather than multiplied by a 0/1 mask, so a masked entry gets exactly zero gradient whatever its
value, and a batch without labels for a task gives a zero for that task that is still connected to the graph (so
DDP sees every parameter used) and never NaN. Logits are cast to float32 inside the losses, so the same code is
exact under bf16/fp16 autocast.
"""

import torch
import torch.nn.functional as F
from torch import nn

from utils.abaw import (
    AU_MISSING,
    EXPR_MISSING,
    LABEL_AU,
    LABEL_COLUMNS,
    NUM_AU,
    OUT_AU,
    OUT_EXPR,
    OUT_VA,
    OUTPUT_WIDTH,
    VA_MISSING,
)

# BCE pos_weight per AU (order AU1, AU2, AU4, AU6, AU7, AU10, AU12, AU15, AU23, AU24, AU25, AU26), the values of the
# reference EMMA loss (ABAW4.md). They look like negatives/positives ratios, but of a label set other than
# s-Aff-Wild2's training split (whose counts give e.g. 4.52 for AU1, not 7.10); kept as the reference used them.
AU_POS_WEIGHT = (
    7.1008924, 15.63964869, 5.47108051, 2.80360066, 1.5152332, 1.89083564,
    3.04637044, 34.04600245, 32.47861156, 36.76637801, 0.58118674, 11.1586486,
)  # fmt: skip

CCC_EPS = 1e-8


def _zero_like_graph(selected: torch.Tensor) -> torch.Tensor:
    """A float32 zero connected to the graph through an empty selection (no NaN even if other entries are NaN)."""
    return selected.float().sum() * 0.0


def ccc_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - CCC over the entries whose target is not -5, with population statistics (float32).

    The small eps is only in the denominator, so a constant batch gives a finite loss. No labelled entry: 0.
    """
    labelled = target != VA_MISSING
    pred = pred.reshape(-1)[labelled.reshape(-1)].float()
    target = target.reshape(-1)[labelled.reshape(-1)].float()
    if pred.numel() == 0:
        return _zero_like_graph(pred)
    pred_mean, target_mean = pred.mean(), target.mean()
    pred_centred, target_centred = pred - pred_mean, target - target_mean
    covariance = (pred_centred * target_centred).mean()
    denominator = (pred_centred**2).mean() + (target_centred**2).mean() + (pred_mean - target_mean) ** 2
    return 1.0 - 2.0 * covariance / (denominator + CCC_EPS)


def masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor, missing: int = EXPR_MISSING) -> torch.Tensor:
    """Mean cross-entropy over the rows whose class is not `missing`; 0 when there is none."""
    labelled = target != missing
    logits = logits[labelled].float()
    if logits.shape[0] == 0:
        return _zero_like_graph(logits)
    return F.cross_entropy(logits, target[labelled].long())


def masked_bce_with_logits(logits: torch.Tensor, target: torch.Tensor, pos_weight: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits averaged over the labelled (target != -1) entries only, with a per-column pos_weight."""
    labelled = target != AU_MISSING
    selected_logits = logits[labelled].float()
    if selected_logits.numel() == 0:
        return _zero_like_graph(selected_logits)
    selected_pos_weight = pos_weight.to(selected_logits).expand_as(logits)[labelled]
    return F.binary_cross_entropy_with_logits(selected_logits, target[labelled].float(), pos_weight=selected_pos_weight)


class MTLLoss(nn.Module):
    """EMMA loss: (1 - CCC_V) + (1 - CCC_A) + CE(expression) + BCE(AU, pos_weight), each term weighted by a lambda.

    forward(output (B, 22) = [VA(2), EXPR(8), AU(12)], target (B, 15) = [V, A, EXPR, 12 AUs]) returns the total and
    the detached terms {'va', 'expr', 'au'} (unweighted).
    """

    def __init__(self, lambda_va: float = 1.0, lambda_expr: float = 1.0, lambda_au: float = 1.0, pos_weight=None):
        super().__init__()
        self.lambda_va = lambda_va
        self.lambda_expr = lambda_expr
        self.lambda_au = lambda_au
        pos_weight = torch.tensor(AU_POS_WEIGHT if pos_weight is None else pos_weight, dtype=torch.float32)
        if pos_weight.shape != (NUM_AU,):
            raise ValueError(f"pos_weight needs {NUM_AU} values, got {tuple(pos_weight.shape)}")
        # Not persistent: a constant of the loss, not state worth saving in checkpoints.
        self.register_buffer("pos_weight", pos_weight, persistent=False)

    def forward(self, output: torch.Tensor, target: torch.Tensor):
        if output.shape[-1] != OUTPUT_WIDTH or target.shape[-1] != LABEL_COLUMNS:
            raise ValueError(f"MTLLoss expects output (B, {OUTPUT_WIDTH}) and target (B, {LABEL_COLUMNS}), got "
                             f"{output.shape}, {target.shape}")
        va_logits, expr_logits, au_logits = output[:, OUT_VA], output[:, OUT_EXPR], output[:, OUT_AU]
        loss_va = ccc_loss(va_logits[:, 0], target[:, 0]) + ccc_loss(va_logits[:, 1], target[:, 1])
        loss_expr = masked_cross_entropy(expr_logits, target[:, 2])
        loss_au = masked_bce_with_logits(au_logits, target[:, LABEL_AU], self.pos_weight)
        total = self.lambda_va * loss_va + self.lambda_expr * loss_expr + self.lambda_au * loss_au
        return total, {"va": loss_va.detach(), "expr": loss_expr.detach(), "au": loss_au.detach()}


def generalized_js(logits_list, weights=None) -> torch.Tensor:
    """Generalised Jensen-Shannon divergence sum_k w_k KL(p_k || m), m = sum_k w_k p_k, of the softmax outputs.

    weights default to equal and are normalised to sum to 1. Computed in log space (log_softmax, logsumexp), so no
    probability clamping is needed. Each KL is averaged over batch *and* classes (the element mean), which is how
    the reference implementation reduced it; this keeps its lambda_JS = 100 meaningful (a per-sample sum over
    classes would be C times larger).
    """
    if len(logits_list) == 0:
        raise ValueError("generalized_js needs at least one set of logits")
    log_probs = torch.stack([F.log_softmax(logits.float(), dim=-1) for logits in logits_list])  # (K, B, C)
    num_dists = log_probs.shape[0]
    if weights is None:
        weights = torch.full((num_dists,), 1.0 / num_dists, device=log_probs.device)
    else:
        weights = torch.as_tensor(weights, dtype=torch.float32, device=log_probs.device)
        if weights.shape != (num_dists,) or bool((weights < 0).any()) or float(weights.sum()) <= 0:
            raise ValueError(f"generalized_js needs {num_dists} non-negative weights, got {weights.tolist()}")
        weights = weights / weights.sum()
    weights = weights.view(-1, *([1] * (log_probs.dim() - 1)))
    log_mixture = torch.logsumexp(torch.log(weights) + log_probs, dim=0)  # log m, (B, C)
    kl_elements = log_probs.exp() * (log_probs - log_mixture)  # p_k (log p_k - log m), (K, B, C)
    return (weights.squeeze() * kl_elements.flatten(1).mean(dim=1)).sum()


class CoTEXLoss(nn.Module):
    """Masked-CoTEX loss: lambda_ce * mean over ViTs of CE(labelled rows) + lambda_js * generalized_js.

    forward(logits_list (K tensors (B, C)), target (B,) with -1 = unlabelled) returns the total and the detached
    terms {'ce', 'js'} (unweighted). Defaults as the reference: lambda_ce 1, lambda_js 100.
    """

    def __init__(self, lambda_ce: float = 1.0, lambda_js: float = 100.0, weights=None):
        super().__init__()
        self.lambda_ce = lambda_ce
        self.lambda_js = lambda_js
        self.weights = weights

    def forward(self, logits_list, target: torch.Tensor):
        loss_ce = torch.stack([masked_cross_entropy(logits, target) for logits in logits_list]).mean()
        loss_js = generalized_js(logits_list, self.weights)
        total = self.lambda_ce * loss_ce + self.lambda_js * loss_js
        return total, {"ce": loss_ce.detach(), "js": loss_js.detach()}
