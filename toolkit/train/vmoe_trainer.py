"""Training Mobile V-MoE (arXiv 2309.04354) and its dense baseline on images.

Losses, per batch of images x with labels y:
    dense / any:   L_cls = CE_smoothed(logits, y)
    superclass:    L = L_cls + 0.3 * CE(router_logits, superclass[y])        (the paper's
                   guided router; gates renormalised, so with k = 1 the gate is 1 and the
                   router learns only from its own target)
    end-to-end:    L = L_cls + 0.01 * E * sum_e f_e * P_e                     (ablation; the
                   Switch Transformer balance loss, arXiv 2101.03961: f_e = share of images
                   routed to e, P_e = mean router probability of e; the gate is the raw
                   top-k probability so the class loss trains the router through it)
AdamW, linear warm-up then cosine decay, random horizontal flips. Seeded: one seed gives
the same weights on the same machine and thread count.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from models.vmoe import VisionMoE, VMoEConfig, count_params, dense_baseline, flops_per_image
from toolkit.data.images import ImageData

ROUTER_MODES = ("superclass", "end-to-end", "dense")
EVAL_BATCH = 500


@dataclasses.dataclass
class TrainSettings:
    epochs: int = 3
    batch_size: int = 128
    # AdamW; a ViT this small tolerates a large rate with warm-up.
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_fraction: float = 0.1
    label_smoothing: float = 0.1
    # lambda of the super-class router loss (the paper's 0.3).
    router_weight: float = 0.3
    # Coefficient of the balance loss of the end-to-end router (Switch uses 0.01).
    balance_weight: float = 0.01
    # Random horizontal flips of the training images.
    flip: bool = True
    seed: int = 0


def build_model(config: VMoEConfig, mode: str) -> VisionMoE:
    if mode == "dense":
        return dense_baseline(config)
    if mode == "end-to-end":
        return VisionMoE(dataclasses.replace(config, renormalize=False))
    return VisionMoE(dataclasses.replace(config, renormalize=True))


def balance_loss(router_logits: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """E * sum_e f_e * P_e over a batch (1 when routing and probabilities are uniform)."""
    num_experts = router_logits.shape[-1]
    share = torch.bincount(experts.flatten(), minlength=num_experts).float()
    share = share / experts.numel()
    probability = router_logits.softmax(dim=-1).mean(dim=0)
    return num_experts * (share * probability).sum()


def batch_loss(model: VisionMoE, images: torch.Tensor, labels: torch.Tensor, mode: str,
               settings: TrainSettings, superclass_of: torch.Tensor | None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, class logits) of one batch under `mode`."""
    out = model.forward_with_routing(images)
    loss = F.cross_entropy(out.logits, labels, label_smoothing=settings.label_smoothing)
    if mode == "superclass":
        loss = loss + settings.router_weight * F.cross_entropy(out.router_logits,
                                                               superclass_of[labels])
    elif mode == "end-to-end":
        loss = loss + settings.balance_weight * balance_loss(out.router_logits, out.experts)
    return loss, out.logits


def train_vmoe(config: VMoEConfig, data: ImageData, mode: str, settings: TrainSettings, *,
               superclasses: list[int] | None = None, show_progress: bool = True,
               ) -> tuple[VisionMoE, dict]:
    """Train from scratch on data.train; returns the model (eval mode) and its history."""
    if mode == "superclass" and superclasses is None:
        raise ValueError("superclass mode needs the super-class of every class")
    torch.manual_seed(settings.seed)
    model = build_model(config, mode)
    superclass_of = torch.tensor(superclasses) if superclasses is not None else None
    images, labels = data.train
    steps_per_epoch = math.ceil(images.shape[0] / settings.batch_size)
    total = steps_per_epoch * settings.epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr,
                                  weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(total, max(1, int(settings.warmup_fraction * total))))
    generator = torch.Generator().manual_seed(settings.seed)
    bar = _bar(total, f"train {mode}", show_progress)
    history, start = [], time.perf_counter()
    model.train()
    for epoch in range(settings.epochs):
        order = torch.randperm(images.shape[0], generator=generator)
        seen = correct = 0
        loss_sum = 0.0
        for first in range(0, images.shape[0], settings.batch_size):
            rows = order[first:first + settings.batch_size]
            x = data.normalise(images[rows])
            x = augment(x, generator) if settings.flip else x
            loss, logits = batch_loss(model, x, labels[rows], mode, settings, superclass_of)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            seen += rows.numel()
            correct += int((logits.argmax(-1) == labels[rows]).sum())
            loss_sum += float(loss.detach()) * rows.numel()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss_sum / seen:.3f}",
                                acc=f"{correct / seen:.3f}")
        history.append({"epoch": epoch + 1, "loss": loss_sum / seen,
                        "train_accuracy": correct / seen})
    if bar is not None:
        bar.close()
    model.eval()
    return model, {"epochs": history, "train_seconds": time.perf_counter() - start}


def warmup_cosine(total: int, warmup: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flip per image (garments and shoes read the same mirrored)."""
    flip = torch.rand(x.shape[0], generator=generator) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


@torch.no_grad()
def predict(model: VisionMoE, data: ImageData, images: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(predicted classes [N], chosen experts [N, k] or None) for raw-pixel images."""
    predictions, experts = [], []
    for chunk in images.split(EVAL_BATCH):
        out = model.forward_with_routing(data.normalise(chunk))
        predictions.append(out.logits.argmax(-1))
        if out.experts is not None:
            experts.append(out.experts)
    return torch.cat(predictions), (torch.cat(experts) if experts else None)


def evaluate(model: VisionMoE, data: ImageData, split: tuple[torch.Tensor, torch.Tensor]
             ) -> dict:
    """Accuracy, per-class accuracy and (MoE) expert usage per class on a labelled split."""
    images, labels = split
    predictions, experts = predict(model, data, images)
    per_class = {name: float((predictions[labels == c] == c).float().mean())
                 for c, name in enumerate(data.classes) if bool((labels == c).any())}
    total, active = count_params(model)
    metrics = {"accuracy": float((predictions == labels).float().mean()),
               "per_class_accuracy": per_class, "images": int(labels.numel()),
               "params_total": total, "params_active": active,
               "flops_per_image": flops_per_image(model.config)}
    if experts is not None:
        usage = torch.zeros(len(data.classes), model.config.num_experts, dtype=torch.long)
        usage.index_put_((labels.repeat_interleave(experts.shape[1]), experts.flatten()),
                         torch.ones(experts.numel(), dtype=torch.long), accumulate=True)
        metrics["expert_usage_by_class"] = {name: usage[c].tolist()
                                            for c, name in enumerate(data.classes)}
    return metrics


def _bar(total: int, description: str, show: bool):
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="step", dynamic_ncols=True)
