"""Super-class clustering of a confusion matrix and the V-MoE training losses, against hand
computations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.vmoe import FASHION_MNIST
from toolkit.errors import UserError
from toolkit.train.superclass import confusion_matrix, superclasses_from_confusion
from toolkit.train.vmoe_trainer import TrainSettings, balance_loss, batch_loss, build_model


def test_classes_with_identical_confusion_rows_share_a_superclass():
    # Three blocks {0, 3, 5}, {1, 4}, {2} whose members have identical rows: a member of a
    # block is confused only with its block.
    blocks = [[0, 3, 5], [1, 4], [2]]
    confusion = torch.zeros(6, 6, dtype=torch.long)
    for block in blocks:
        for i in block:
            for j in block:
                confusion[i, j] = 30 if i == j else 10
    assignment = superclasses_from_confusion(confusion, 3)
    for block in blocks:
        assert len({assignment[c] for c in block}) == 1
    assert len(set(assignment)) == 3
    assert assignment == superclasses_from_confusion(confusion.clone(), 3)  # deterministic
    assert assignment[0] == 0  # groups numbered by their lowest class


def test_every_group_is_non_empty_and_count_is_exact():
    confusion = torch.randint(0, 50, (10, 10), generator=torch.Generator().manual_seed(1))
    for groups in (1, 4, 10):
        assignment = superclasses_from_confusion(confusion, groups)
        assert sorted(set(assignment)) == list(range(groups))
    with pytest.raises(UserError, match="cannot make 11 super-classes"):
        superclasses_from_confusion(confusion, 11)


def test_confusion_matrix_counts():
    predictions = torch.tensor([0, 1, 1, 2, 0])
    labels = torch.tensor([0, 1, 2, 2, 1])
    expected = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 1, 1]])
    assert torch.equal(confusion_matrix(predictions, labels, 3), expected)


def test_balance_loss_by_hand():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8],
                                     [0.5, 0.25, 0.25]]))
    experts = torch.tensor([[0], [0], [2], [0]])
    share = torch.tensor([3 / 4, 0, 1 / 4])
    mean_p = torch.tensor([1.9, 0.85, 1.25]) / 4
    expected = 3 * float((share * mean_p).sum())
    assert float(balance_loss(logits, experts)) == pytest.approx(expected, rel=1e-6)


def test_guided_loss_is_class_ce_plus_0_3_router_ce():
    torch.manual_seed(0)
    config = FASHION_MNIST.__class__(**{**FASHION_MNIST.__dict__, "depth": 3, "dim": 32,
                                        "heads": 2})
    model = build_model(config, "superclass").eval()
    images, labels = torch.randn(6, 1, 28, 28), torch.tensor([0, 1, 2, 3, 4, 9])
    superclass_of = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 0, 1])
    settings = TrainSettings(label_smoothing=0.0)
    loss, logits = batch_loss(model, images, labels, "superclass", settings, superclass_of)
    out = model.forward_with_routing(images)
    expected = (F.cross_entropy(out.logits, labels)
                + 0.3 * F.cross_entropy(out.router_logits, superclass_of[labels]))
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    loss.backward()
    assert model.router.weight.grad.abs().sum() > 0  # the router learns from its target
