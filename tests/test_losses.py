"""The pure math of T3D: hand-computed DDO values, masked log-probs, the level-averaged path loss."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from trl_t3d.losses import (
    ddo_loss,
    masked_sequence_logps,
    path_level_weights,
    path_loss,
    sample_fake_tokens,
    selected_token_logps,
)


def _softplus(x):
    return math.log1p(math.exp(x))


def test_ddo_loss_matches_hand_computation():
    pr, pf, rr, rf = (
        torch.tensor([-1.0, -3.0]),
        torch.tensor([-2.0, -0.5]),
        torch.tensor([-1.5, -2.0]),
        torch.tensor([-1.0, -1.0]),
    )
    loss, real, fake = ddo_loss(pr, pf, rr, rf, alpha=0.5, beta=0.1)
    # -log σ(z) = softplus(-z); -log(1 - σ(z)) = softplus(z)
    exp_real = [_softplus(-0.1 * (-1.0 + 1.5)), _softplus(-0.1 * (-3.0 + 2.0))]
    exp_fake = [0.5 * _softplus(0.1 * (-2.0 + 1.0)), 0.5 * _softplus(0.1 * (-0.5 + 1.0))]
    torch.testing.assert_close(real, torch.tensor(exp_real), rtol=0, atol=1e-6)
    torch.testing.assert_close(fake, torch.tensor(exp_fake), rtol=0, atol=1e-6)
    torch.testing.assert_close(loss, real + fake)
    # Same values as the unstable textbook form.
    naive_fake = -0.5 * torch.log(1 - torch.sigmoid(0.1 * (pf - rf)))
    torch.testing.assert_close(fake, naive_fake, rtol=1e-6, atol=1e-6)


def test_ddo_loss_alpha_zero_and_equal_models():
    x = torch.tensor([-0.3, -7.0, -2.5])
    y = torch.tensor([-1.0, -0.2, -4.0])
    loss, real, fake = ddo_loss(x, y, x, y, alpha=0.0, beta=0.1)
    torch.testing.assert_close(fake, torch.zeros(3))
    torch.testing.assert_close(real, torch.full((3,), math.log(2)))
    torch.testing.assert_close(loss, real)
    _, real, fake = ddo_loss(x, y, x, y, alpha=0.5, beta=0.1)
    torch.testing.assert_close(real, torch.full((3,), math.log(2)))
    torch.testing.assert_close(fake, torch.full((3,), 0.5 * math.log(2)))


def test_ddo_loss_is_stable_for_huge_margins():
    big = torch.tensor([1e4])
    loss, real, fake = ddo_loss(big, big, -big, -big, alpha=0.5, beta=1.0)
    assert torch.isfinite(loss).all() and fake.item() > 1e3 and real.item() < 1e-6


def test_masked_sequence_logps_is_the_mean_over_the_mask():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    labels = torch.randint(11, (2, 5))
    mask = torch.tensor([[1, 0, 1, 1, 0], [0, 0, 0, 1, 0]], dtype=torch.bool)
    full = logits.log_softmax(-1).gather(-1, labels[..., None])[..., 0]
    expected = torch.stack([full[0, [0, 2, 3]].mean(), full[1, 3]])
    torch.testing.assert_close(masked_sequence_logps(logits, labels, mask), expected)


class _RecordLogSoftmax(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (torch.ops.aten._log_softmax, torch.ops.aten.log_softmax):
            self.shapes.append((tuple(args[0].shape), args[0].dtype))
        return func(*args, **(kwargs or {}))


def test_log_softmax_only_over_masked_rows_in_fp32():
    logits = torch.randn(3, 16, 50, dtype=torch.bfloat16)
    labels = torch.randint(50, (3, 16))
    mask = torch.zeros(3, 16, dtype=torch.bool)
    mask[0, 2], mask[1, 5:8], mask[2, 15] = True, True, True
    with _RecordLogSoftmax() as rec:
        real, fake = selected_token_logps(logits, mask, labels, labels.flip(-1))
    assert rec.shapes == [((5, 50), torch.float32)]  # one fp32 log-softmax, |M| rows, shared by y and ŷ
    assert real.dtype == torch.float32 and bool((real[~mask] == 0).all())


def _path_loss_loop(logits, labels, mask, step_map, block_length, k):
    """Direct transcription of the definition: levels, blocks and examples as Python loops."""
    losses = []
    for b in range(logits.shape[0]):
        ce = F.cross_entropy(logits[b].float(), labels[b], reduction="none")
        rank = torch.zeros_like(labels[b])
        for start in range(0, labels.shape[1], block_length):
            order = sorted(range(start, min(start + block_length, labels.shape[1])), key=lambda i: (step_map[b][i], i))
            for r, i in enumerate(order):
                rank[i] = r
        levels = []
        for level in range(math.ceil(block_length / k)):
            sel = [i for i in range(labels.shape[1]) if mask[b, i] and rank[i] < (level + 1) * k]
            if sel:
                levels.append(ce[sel].mean())
        losses.append(torch.stack(levels).mean())
    return torch.stack(losses), rank


@pytest.mark.parametrize("block_length,k", [(4, 2), (8, 4), (8, 3), (4, 4)])
def test_path_loss_matches_the_loop_definition(block_length, k):
    torch.manual_seed(block_length * 10 + k)
    B, L, V = 3, 2 * block_length + 3, 13
    logits, labels = torch.randn(B, L, V), torch.randint(V, (B, L))
    step_map = torch.stack([torch.randperm(L) for _ in range(B)])
    mask = torch.rand(B, L) < 0.6
    mask[:, 0] = True
    from trl_t3d.trainer.collator import decode_ranks

    ranks = torch.stack([decode_ranks(s, block_length) for s in step_map])
    expected = torch.stack(
        [
            _path_loss_loop(
                logits[b : b + 1], labels[b : b + 1], mask[b : b + 1], step_map[b : b + 1], block_length, k
            )[0][0]
            for b in range(B)
        ]
    )
    torch.testing.assert_close(path_loss(logits, labels, mask, ranks, block_length, k), expected)


def test_path_loss_hand_example_weights_early_tokens_more():
    # One block of 4, k = 2, all masked: level 0 = ranks {0, 1}, level 1 = all four.
    logits = torch.zeros(1, 4, 3)
    labels = torch.zeros(1, 4, dtype=torch.long)
    mask = torch.ones(1, 4, dtype=torch.bool)
    rank = torch.tensor([[2, 0, 3, 1]])
    weights = path_level_weights(mask, rank, 4, 2)
    torch.testing.assert_close(weights, torch.tensor([[1 / 8, 3 / 8, 1 / 8, 3 / 8]]))
    torch.testing.assert_close(path_loss(logits, labels, mask, rank, 4, 2), torch.tensor([math.log(3)]))


def test_fake_tokens_argmax_and_gumbel_reproducible():
    logits = torch.randn(6, 20)
    assert torch.equal(sample_fake_tokens(logits, 0.0), logits.argmax(-1))
    a = sample_fake_tokens(logits, 1.0, torch.Generator().manual_seed(3))
    b = sample_fake_tokens(logits, 1.0, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    peaked = torch.full((4, 5), -1e4)
    peaked[:, 2] = 0
    assert bool((sample_fake_tokens(peaked, 0.5, torch.Generator().manual_seed(0)) == 2).all())


def test_ntd_loss_is_the_mean_masked_cross_entropy():
    from trl_t3d.losses import ntd_loss, selected_token_logps

    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0]]])
    labels = torch.tensor([[0, 2, 2]])
    mask = torch.tensor([[True, True, False]])
    (token_logps,) = selected_token_logps(logits, mask, labels)
    lse0, lse1 = math.log(math.exp(2) + 2), math.log(math.exp(1) + 2)
    expected = ((lse0 - 2.0) + (lse1 - 0.0)) / 2  # position 2 is not masked
    assert ntd_loss(token_logps, mask).item() == pytest.approx(expected, abs=1e-6)


def test_certainty_loss_is_the_entropy_of_correct_predictions_only():
    from trl_t3d.losses import certainty_loss, masked_log_probs

    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0]]])
    labels = torch.tensor([[0, 2, 2]])  # position 0 right, position 1 wrong (argmax 1), position 2 right
    mask = torch.tensor([[True, True, True]])
    log_probs = masked_log_probs(logits, mask)

    def entropy(row):
        p = torch.softmax(torch.tensor(row), -1)
        return float(-(p * p.log()).sum())

    expected = (entropy([2.0, 0.0, 0.0]) + entropy([0.0, 0.0, 3.0])) / 2
    assert certainty_loss(log_probs, labels, mask).item() == pytest.approx(expected, abs=1e-6)
    # gradient lowers the entropy of the correct rows and leaves the wrong one alone
    leaf = logits.clone().requires_grad_(True)
    certainty_loss(masked_log_probs(leaf, mask), labels, mask).backward()
    assert leaf.grad[0, 1].abs().sum() == 0 and leaf.grad[0, 0, 0] < 0
