"""utils.losses: masked entries get exactly zero gradient, empty tasks give zero (not NaN), values match formulas."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from utils.losses import AU_POS_WEIGHT, CoTEXLoss, MTLLoss, ccc_loss, generalized_js


def numpy_ccc(x, y):
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    cov = np.mean((x - x.mean()) * (y - y.mean()))
    return 2 * cov / (x.var() + y.var() + (x.mean() - y.mean()) ** 2)


def mtl_batch(seed=0, batch=16):
    """Outputs (B, 22) and targets (B, 15) with every missing code, some rows fully unlabelled for a task."""
    gen = torch.Generator().manual_seed(seed)
    output = torch.randn(batch, 22, generator=gen)
    target = torch.empty(batch, 15)
    target[:, :2] = torch.rand(batch, 2, generator=gen) * 2 - 1
    target[:, 2] = torch.randint(0, 8, (batch,), generator=gen).float()
    target[:, 3:] = (torch.rand(batch, 12, generator=gen) < 0.3).float()
    target[::3, 0] = -5
    target[1::4, 1] = -5
    target[::2, 2] = -1
    au_missing = torch.rand(batch, 12, generator=gen) < 0.3
    target[:, 3:][au_missing] = -1
    return output, target


def test_au_pos_weight_is_the_reference_vector():
    assert len(AU_POS_WEIGHT) == 12
    assert AU_POS_WEIGHT[0] == pytest.approx(7.10, abs=0.01) and AU_POS_WEIGHT[10] == pytest.approx(0.58, abs=0.01)


def test_ccc_loss_equals_one_minus_numpy_ccc_on_labelled_entries():
    gen = torch.Generator().manual_seed(1)
    pred, target = torch.randn(40, generator=gen), torch.rand(40, generator=gen) * 2 - 1
    target[::5] = -5
    labelled = (target != -5).numpy()
    expected = 1 - numpy_ccc(pred.numpy()[labelled], target.numpy()[labelled])
    assert ccc_loss(pred, target).item() == pytest.approx(expected, abs=1e-6)


def test_ccc_loss_masked_entries_get_zero_gradient_even_with_extreme_values():
    gen = torch.Generator().manual_seed(2)
    pred = torch.randn(20, generator=gen)
    pred[::4] = torch.tensor([1e30, -1e30, float("nan"), float("inf"), 3e38])
    pred.requires_grad_(True)
    target = torch.rand(20, generator=gen) * 2 - 1
    target[::4] = -5
    loss = ccc_loss(pred, target)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.all(pred.grad[::4] == 0)
    assert torch.all(torch.isfinite(pred.grad)) and pred.grad.abs().sum() > 0


def test_ccc_loss_without_labels_is_connected_zero():
    pred = torch.tensor([float("nan"), 1e30, 0.5], requires_grad=True)
    loss = ccc_loss(pred, torch.full((3,), -5.0))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(pred.grad, torch.zeros(3))


def test_ccc_loss_on_a_constant_batch_is_finite():
    pred = torch.full((4,), 0.3, requires_grad=True)
    loss = ccc_loss(pred, torch.full((4,), 0.3))
    loss.backward()
    assert torch.isfinite(loss) and torch.all(torch.isfinite(pred.grad))


def hand_mtl_loss(output, target):
    """The EMMA loss written out per term from its formulas, in float64 numpy."""
    out, tgt = output.double().numpy(), target.double().numpy()
    va = sum(1 - numpy_ccc(out[tgt[:, d] != -5, d], tgt[tgt[:, d] != -5, d]) for d in range(2))
    has_expr = tgt[:, 2] != -1
    logits = out[has_expr, 2:10]
    log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    expr = -np.mean(log_softmax[np.arange(len(logits)), tgt[has_expr, 2].astype(int)])
    au_logits, au_target = out[:, 10:], tgt[:, 3:]
    labelled = au_target != -1
    sig = 1 / (1 + np.exp(-au_logits))
    pos_weight = np.broadcast_to(np.array(AU_POS_WEIGHT), au_logits.shape)
    per_entry = -(pos_weight * au_target * np.log(sig) + (1 - au_target) * np.log(1 - sig))
    au = per_entry[labelled].sum() / labelled.sum()  # labelled entries only, not all rows
    return va, expr, au


def test_mtl_loss_terms_match_hand_computation():
    output, target = mtl_batch(seed=3)
    total, terms = MTLLoss()(output, target)
    va, expr, au = hand_mtl_loss(output, target)
    assert terms["va"].item() == pytest.approx(va, abs=1e-5)
    assert terms["expr"].item() == pytest.approx(expr, abs=1e-5)
    assert terms["au"].item() == pytest.approx(au, abs=1e-5)
    assert total.item() == pytest.approx(va + expr + au, abs=1e-5)
    assert not any(t.requires_grad for t in terms.values())
    weighted, _ = MTLLoss(lambda_va=0.5, lambda_expr=2.0, lambda_au=0.0)(output, target)
    assert weighted.item() == pytest.approx(0.5 * va + 2.0 * expr, abs=1e-5)


def test_mtl_loss_gives_zero_gradient_to_masked_entries():
    output, target = mtl_batch(seed=4)
    # Extreme logits behind the missing codes must not leak into the gradient.
    output[:, 0][target[:, 0] == -5] = 1e30
    output[:, 1][target[:, 1] == -5] = -1e30
    output[:, 2:10][target[:, 2] == -1] = 1e30
    output[:, 10:][target[:, 3:] == -1] = -1e30
    output.requires_grad_(True)
    total, _ = MTLLoss()(output, target)
    total.backward()
    assert torch.isfinite(total)
    grad = output.grad
    assert torch.all(grad[:, 0][target[:, 0] == -5] == 0)
    assert torch.all(grad[:, 1][target[:, 1] == -5] == 0)
    assert torch.all(grad[:, 2:10][target[:, 2] == -1] == 0)
    assert torch.all(grad[:, 10:][target[:, 3:] == -1] == 0)
    assert torch.all(torch.isfinite(grad))
    assert grad[:, 10:][target[:, 3:] != -1].abs().min() > 0


def test_mtl_loss_all_missing_batch_is_zero_not_nan():
    output = torch.randn(5, 22, requires_grad=True)
    target = torch.cat([torch.full((5, 2), -5.0), torch.full((5, 1), -1.0), torch.full((5, 12), -1.0)], dim=1)
    total, terms = MTLLoss()(output, target)
    assert total.item() == 0.0 and all(t.item() == 0.0 for t in terms.values())
    total.backward()
    assert torch.equal(output.grad, torch.zeros_like(output))


def test_mtl_loss_computes_in_float32_from_bf16_outputs():
    output, target = mtl_batch(seed=5)
    total_fp32, _ = MTLLoss()(output, target)
    total_bf16, terms = MTLLoss()(output.bfloat16(), target)
    assert total_bf16.dtype == torch.float32 and terms["au"].dtype == torch.float32
    assert total_bf16.item() == pytest.approx(total_fp32.item(), rel=0.05)


def numpy_generalized_js(logits_list, weights):
    probs = [np.exp(x - x.max(axis=1, keepdims=True)) for x in (np.asarray(x, dtype=np.float64) for x in logits_list)]
    probs = [p / p.sum(axis=1, keepdims=True) for p in probs]
    mixture = sum(w * p for w, p in zip(weights, probs))
    return sum(w * np.mean(p * (np.log(p) - np.log(mixture))) for w, p in zip(weights, probs))


def test_js_of_identical_distributions_is_zero():
    logits = torch.randn(6, 5)
    assert generalized_js([logits, logits.clone(), logits + 3.0]).item() == pytest.approx(0.0, abs=1e-7)


def test_js_matches_numpy_formula_with_element_mean():
    gen = torch.Generator().manual_seed(6)
    logits_list = [torch.randn(8, 6, generator=gen) * 2 for _ in range(3)]
    expected = numpy_generalized_js([x.numpy() for x in logits_list], [1 / 3] * 3)
    assert generalized_js(logits_list).item() == pytest.approx(expected, rel=1e-5)
    weights = [0.5, 0.3, 0.2]
    expected_weighted = numpy_generalized_js([x.numpy() for x in logits_list], weights)
    assert generalized_js(logits_list, weights).item() == pytest.approx(expected_weighted, rel=1e-5)
    # Two-distribution JS is bounded by log 2 per sample; the element mean divides that by the class count.
    far = [torch.tensor([[50.0, 0.0]]), torch.tensor([[0.0, 50.0]])]
    assert generalized_js(far).item() == pytest.approx(math.log(2) / 2, rel=1e-5)


def test_js_is_symmetric_under_permutation():
    gen = torch.Generator().manual_seed(7)
    a, b, c = (torch.randn(4, 6, generator=gen) for _ in range(3))
    reference = generalized_js([a, b, c]).item()
    for order in ([b, a, c], [c, b, a], [b, c, a]):
        assert generalized_js(order).item() == pytest.approx(reference, rel=1e-6)


def test_js_is_finite_with_extreme_logits():
    a = torch.tensor([[1e4, -1e4, 0.0]], requires_grad=True)
    b = torch.tensor([[-1e4, 1e4, 0.0]], requires_grad=True)
    js = generalized_js([a, b])
    js.backward()
    assert torch.isfinite(js) and torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()


def test_cotex_loss_combines_mean_ce_and_weighted_js():
    gen = torch.Generator().manual_seed(8)
    logits_list = [torch.randn(10, 6, generator=gen) for _ in range(2)]
    target = torch.randint(0, 6, (10,), generator=gen)
    target[3] = -1
    labelled = target != -1
    expected_ce = np.mean([F.cross_entropy(x[labelled], target[labelled]).item() for x in logits_list])
    expected_js = numpy_generalized_js([x.numpy() for x in logits_list], [0.5, 0.5])
    total, terms = CoTEXLoss()(logits_list, target)
    assert terms["ce"].item() == pytest.approx(expected_ce, rel=1e-5)
    assert terms["js"].item() == pytest.approx(expected_js, rel=1e-5)
    assert total.item() == pytest.approx(expected_ce + 100 * expected_js, rel=1e-5)


def test_cotex_loss_unlabelled_rows_get_no_ce_gradient_and_all_missing_is_not_nan():
    logits_list = [torch.randn(4, 6, requires_grad=True) for _ in range(2)]
    target = torch.tensor([2, -1, 5, -1])
    total, _ = CoTEXLoss(lambda_js=0.0)(logits_list, target)
    total.backward()
    for logits in logits_list:
        assert torch.all(logits.grad[target == -1] == 0)
        assert logits.grad[target != -1].abs().sum() > 0

    logits_list = [torch.randn(3, 6, requires_grad=True) for _ in range(2)]
    total, terms = CoTEXLoss()(logits_list, torch.full((3,), -1))
    total.backward()
    assert terms["ce"].item() == 0.0 and torch.isfinite(total)
    assert all(torch.isfinite(x.grad).all() for x in logits_list)
