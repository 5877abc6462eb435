"""Distillation: the KD and feature losses against hand-written formulas, recovery of a
pruned toy MLP with its zeros kept, determinism, and the LM adapter on the fake Llama."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import compress
from compress.distill import (
    DistillConfig,
    classifier_forward,
    distill,
    feature_loss,
    kd_loss,
    keep_zeros_masks,
    lm_forward,
)
from compress.errors import CompressError

IN, HIDDEN, CLASSES = 16, 64, 10


def _reference_kd(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> float:
    """T^2 * mean over positions of sum_c p_t,c * (log p_t,c - log p_s,c), position by
    position in a Python loop."""
    s = student.reshape(-1, student.shape[-1]).double()
    t = teacher.reshape(-1, teacher.shape[-1]).double()
    total = 0.0
    for row in range(s.shape[0]):
        log_p_s = torch.log_softmax(s[row] / temperature, dim=0)
        p_t = torch.softmax(t[row] / temperature, dim=0)
        total += float((p_t * (torch.log(p_t) - log_p_s)).sum())
    return temperature**2 * total / s.shape[0]


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_kd_loss_matches_formula(temperature: float) -> None:
    gen = torch.Generator().manual_seed(1)
    # [B=2, L=3, V=5]: 6 positions, so batchmean over B alone would be 3x too large
    student = torch.randn(2, 3, 5, generator=gen) * 2
    teacher = torch.randn(2, 3, 5, generator=gen) * 2
    got = float(kd_loss(student, teacher, temperature))
    assert got == pytest.approx(_reference_kd(student, teacher, temperature), rel=1e-5)
    assert got > 0
    # [B, C] classifier logits: positions are the images
    assert float(kd_loss(student[0], teacher[0], temperature)) == pytest.approx(
        _reference_kd(student[0], teacher[0], temperature), rel=1e-5)


def test_kd_loss_temperature_factor() -> None:
    gen = torch.Generator().manual_seed(2)
    student, teacher = torch.randn(4, 7, generator=gen), torch.randn(4, 7, generator=gen)
    # T^2 * KL at T=3 vs the plain KL of the logits divided by 3
    plain = float(kd_loss(student / 3, teacher / 3, 1.0))
    assert float(kd_loss(student, teacher, 3.0)) == pytest.approx(9 * plain, rel=1e-5)


def test_kd_loss_zero_when_equal_and_gradient_only_to_student() -> None:
    logits = torch.randn(3, 4, 11, generator=torch.Generator().manual_seed(3))
    assert float(kd_loss(logits, logits.clone(), 2.0)) == pytest.approx(0.0, abs=1e-6)
    student = logits.clone().requires_grad_()
    teacher = (logits + 1.0 * torch.randn(3, 4, 11)).requires_grad_()
    kd_loss(student, teacher, 2.0).backward()
    assert student.grad is not None and float(student.grad.abs().sum()) > 0
    assert teacher.grad is None
    with pytest.raises(CompressError, match="vocabulary"):
        kd_loss(torch.zeros(2, 5), torch.zeros(2, 6), 1.0)


def test_feature_loss_hand_values() -> None:
    student = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    teacher = torch.tensor([[1.0, 0.0], [3.0, 2.0]])
    # squared diffs 0, 4, 0, 4 -> MSE 2; teacher mean square (1 + 0 + 9 + 4) / 4 = 3.5
    assert float(feature_loss(student, teacher)) == pytest.approx(2 / 3.5, rel=1e-6)
    assert float(feature_loss(teacher, teacher)) == 0.0
    # relative: scaling both by 1000 leaves it unchanged
    assert float(feature_loss(1000 * student, 1000 * teacher)) == pytest.approx(2 / 3.5,
                                                                                  rel=1e-6)
    with pytest.raises(CompressError, match="feature_weight=0"):
        feature_loss(torch.zeros(2, 3), torch.zeros(2, 4))


def _toy_models(seed: int = 0) -> tuple[nn.Module, nn.Module, dict[str, torch.Tensor]]:
    """A random MLP teacher; the student is a copy with 50% of each weight matrix zeroed."""
    gen = torch.Generator().manual_seed(seed)
    teacher = nn.Sequential(nn.Linear(IN, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, CLASSES))
    with torch.no_grad():
        for param in teacher.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) / math.sqrt(param.shape[-1]))
        teacher[2].weight.mul_(4)  # confident enough that the KL has room to fall
    student = copy.deepcopy(teacher)
    zeros = {}
    with torch.no_grad():
        for name, param in student.named_parameters():
            if param.ndim == 2:
                zeros[name] = torch.rand(param.shape, generator=gen) < 0.5
                param.masked_fill_(zeros[name], 0.0)
    return teacher, student, zeros


def _toy_data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + seed)
    return torch.randn(256, IN, generator=gen), torch.randn(128, IN, generator=gen)


TOY = dict(steps=100, lr=1e-2, batch_size=32, temperature=2.0)


def test_recovery_lowers_kl_and_keeps_zeros() -> None:
    teacher, student, zeros = _toy_models()
    teacher_before = copy.deepcopy(teacher.state_dict())
    train, held_out = _toy_data()
    calls, teacher_modes = [], []
    teacher.register_forward_pre_hook(lambda module, _: teacher_modes.append(module.training))
    assert teacher.training  # a fresh module; distill must switch it to eval and back
    report = distill(student, teacher, train, DistillConfig(**TOY), forward=classifier_forward,
                     eval_batch=held_out, progress=lambda *a: calls.append(a))
    modes = list(teacher_modes)  # one teacher forward per step + the two held-out KLs
    with torch.no_grad():  # the held-out KL, measured here independently
        final = _reference_kd(student(held_out), teacher(held_out), 1.0)
    assert report.final_kl == pytest.approx(final, rel=1e-4)
    assert report.initial_kl > 0.05
    assert report.final_kl < 0.5 * report.initial_kl
    assert len(report.losses) == TOY["steps"] and report.masked_tensors == 2
    for name, param in student.named_parameters():
        if name in zeros:
            assert torch.all(param[zeros[name]] == 0), name
            moved = param[~zeros[name]] != teacher_before[name][~zeros[name]]
            assert float(moved.float().mean()) > 0.9, name  # the kept ones did train
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key]), key
    assert len(modes) == TOY["steps"] + 2 and not any(modes)
    assert not student.training and teacher.training
    assert calls[0] == ("distill", 1, TOY["steps"]) and calls[-1] == ("distill", 100, 100)


def test_without_keep_zeros_pruned_weights_move() -> None:
    teacher, student, zeros = _toy_models()
    train, held_out = _toy_data()
    config = DistillConfig(**TOY, keep_zeros=False)
    report = distill(student, teacher, train, config, forward=classifier_forward,
                     eval_batch=held_out)
    assert report.masked_tensors == 0
    for name, param in student.named_parameters():
        if name in zeros:
            assert float((param[zeros[name]] != 0).float().mean()) > 0.9, name


def test_same_seed_same_run_other_seed_differs() -> None:
    def run(seed: int) -> tuple[list[float], torch.Tensor]:
        teacher, student, _ = _toy_models()
        train, _ = _toy_data()
        config = DistillConfig(steps=10, lr=1e-2, batch_size=16, seed=seed)
        report = distill(student, teacher, train, config, forward=classifier_forward)
        return report.losses, student[0].weight.detach().clone()

    losses_a, weight_a = run(0)
    losses_b, weight_b = run(0)
    assert losses_a == losses_b
    assert torch.equal(weight_a, weight_b)
    assert run(1)[0] != losses_a  # the seed drives the sample order


def test_hard_labels_mix_with_alpha() -> None:
    teacher, student, _ = _toy_models()
    x, _ = _toy_data()
    x = x[:32]
    y = torch.randint(0, CLASSES, (32,), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        s, t = student(x), teacher(x)
        expected = 0.25 * _reference_kd(s, t, 2.0) + 0.75 * float(F.cross_entropy(s, y))
    config = DistillConfig(steps=1, alpha=0.25, temperature=2.0)
    report = distill(student, teacher, [x], config, labels=[y], forward=classifier_forward)
    assert report.losses[0] == pytest.approx(expected, rel=1e-5)


def test_one_shot_iterator_is_cycled() -> None:
    teacher, student, _ = _toy_models()
    x, _ = _toy_data()
    batches = iter([x[:8], x[8:16]])
    report = distill(student, teacher, batches, DistillConfig(steps=5, lr=1e-3),
                     forward=classifier_forward)
    assert len(report.losses) == 5
    # steps 1 and 3 see the same batch; the student moved in between, so the loss differs
    assert report.losses[0] != report.losses[2]


def test_bad_requests_raise() -> None:
    teacher, student, _ = _toy_models()
    x, _ = _toy_data()
    with pytest.raises(CompressError, match="same module"):
        distill(teacher, teacher, x, DistillConfig(steps=1), forward=classifier_forward)
    with pytest.raises(CompressError, match="hidden states"):
        distill(student, teacher, x, DistillConfig(steps=1, feature_weight=1.0),
                forward=classifier_forward)
    with pytest.raises(CompressError, match="empty"):
        distill(student, teacher, [], DistillConfig(steps=1), forward=classifier_forward)
    for kwargs, needle in [({"steps": 0}, "steps"), ({"temperature": 0}, "temperature"),
                           ({"alpha": 1.5}, "alpha"), ({"lr": -1.0}, "lr"),
                           ({"feature_weight": -1}, "feature_weight"),
                           ({"feature_layers": []}, "feature_layers")]:
        with pytest.raises(CompressError, match=needle):
            DistillConfig(**kwargs)
    assert DistillConfig(feature_layers=[-1]).to_dict()["feature_layers"] == [-1]


def test_keep_zeros_masks_skip_vectors_and_all_zero_tensors() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2), nn.Linear(2, 2))
    with torch.no_grad():
        model[0].weight[0, 1] = 0.0
        model[0].bias[0] = 0.0  # 1-D: may still learn
        model[2].weight.zero_()  # zero-initialised (a LoRA B), not pruned
    masks = keep_zeros_masks(model)
    assert set(masks) == {"0.weight"}
    expected = torch.ones(3, 4, dtype=torch.bool)
    expected[0, 1] = False
    assert torch.equal(masks["0.weight"], expected)


def _pruned_copy(model: nn.Module) -> nn.Module:
    """Zero the half of every decoder linear's weights with the smallest |W| per row."""
    student = copy.deepcopy(model)
    with torch.no_grad():
        for layer in student.model.layers:
            for module in layer.modules():
                if isinstance(module, nn.Linear):
                    w = module.weight
                    cut = w.abs().kthvalue(w.shape[1] // 2, dim=1, keepdim=True).values
                    w.masked_fill_(w.abs() <= cut, 0.0)
    return student


def test_lm_forward_on_fake_llama_with_feature_matching() -> None:
    from models import create_model

    teacher = create_model("fake-llama").module
    student = _pruned_copy(teacher)
    masks = keep_zeros_masks(student)
    pruned = {f"{name}.weight" for name, module in student.named_modules()
              if isinstance(module, nn.Linear) and ".layers." in name}
    assert len(pruned) == 14 and pruned <= set(masks)
    ids = torch.randint(3, 259, (2, 16), generator=torch.Generator().manual_seed(7))
    config = DistillConfig(steps=20, lr=3e-3, feature_weight=1.0)
    with torch.no_grad():  # the first step's loss, composed here by hand
        (s_logits, s_hidden), (t_logits, t_hidden) = lm_forward(student, ids), \
            lm_forward(teacher, ids)
        assert s_logits.shape == (2, 16, 259) and len(s_hidden) == 3
        features = [float(feature_loss(s, t)) for s, t in zip(s_hidden, t_hidden, strict=True)]
        expected = _reference_kd(s_logits, t_logits, 2.0) + sum(features) / len(features)
    report = distill(student, teacher, [ids], config, forward=lm_forward, eval_batch=ids)
    assert report.losses[0] == pytest.approx(expected, rel=1e-4)
    assert all(math.isfinite(loss) for loss in report.losses)
    assert report.losses[-1] < 0.5 * report.losses[0]
    assert report.final_kl < report.initial_kl
    named = dict(student.named_parameters())
    for name, keep in masks.items():
        assert torch.all(named[name][~keep] == 0), name


def _pixel_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> float:
    """mean over pixels of sum_c p_t log(p_t / p_s), logits [N, C, H, W], written out."""
    p_t = torch.softmax(teacher_logits.double(), dim=1)
    log_ratio = torch.log_softmax(teacher_logits.double(), 1) - \
        torch.log_softmax(student_logits.double(), 1)
    return float((p_t * log_ratio).sum(dim=1).mean())


def _compressed_pair(name: str, config, count: int):
    """(student compressed with `config`, teacher = the model before, `count` images)."""
    from models import create_model

    loaded = create_model(name)
    images = loaded.vision.normalise(loaded.vision.images(count, 1))
    teacher = copy.deepcopy(loaded.module).eval()
    compress.apply(loaded.module, config, images)
    return loaded.module, teacher, images


def test_distill_stage_on_a_pruned_segmenter_is_per_pixel_kl() -> None:
    """`{method: distill}` after channel-prune: the stage reaches the segmenter through
    its task_logits, so its KL is the per-pixel 3-class KL, and training lowers it while
    the norms' running statistics stay as they were."""
    from compress.structured import ChannelPruneConfig

    student, teacher, images = _compressed_pair(
        "fake-portrait", ChannelPruneConfig(criterion="random", sparsity=0.5), 8)
    with torch.no_grad():
        expected = _pixel_kl(student.task_logits(images[:4]), teacher.task_logits(images[:4]))
    stats = {name: buffer.clone() for name, buffer in student.named_buffers()
             if "running" in name}
    config = DistillConfig(steps=15, lr=1e-3, batch_size=4)
    report = compress.apply(student, config, images, teacher=teacher)
    assert report.distilled.initial_kl == pytest.approx(expected, rel=1e-4)
    assert report.distilled.final_kl < report.distilled.initial_kl
    for name, buffer in student.named_buffers():
        if name in stats:
            assert torch.equal(buffer, stats[name]), name


def test_distill_stage_on_a_vmoe_is_the_class_kl() -> None:
    """After expert dropping, the stage distils a V-MoE's class logits (no task_logits:
    the plain classifier output), its KL the batch mean over images."""
    from compress.experts import DropExpertsConfig

    student, teacher, images = _compressed_pair(
        "fake-vmoe", DropExpertsConfig(criterion="random", drop=0.5), 16)
    with torch.no_grad():
        s, t = student.eval()(images[:8]).double(), teacher(images[:8]).double()
        expected = float((torch.softmax(t, -1) * (torch.log_softmax(t, -1)
                                                   - torch.log_softmax(s, -1))).sum(-1).mean())
    report = compress.apply(student, DistillConfig(steps=20, lr=1e-3), images,
                            teacher=teacher)
    assert report.distilled.initial_kl == pytest.approx(expected, rel=1e-4)
    assert report.distilled.final_kl < report.distilled.initial_kl
