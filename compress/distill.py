"""Knowledge distillation (Hinton et al., arXiv 1503.02531): train a student to match a
teacher's temperature-softened output distribution, optionally its hidden states too.

    loss = alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T))     (soft targets)
         + (1 - alpha) * CE(z_s, labels)   (only when labels are given; hard or soft)
         + beta * mean_l ||h_s^l - h_t^l||^2 / ||h_t^l||^2    (hidden-state matching)

Two uses: recovery after pruning or expert dropping (teacher = the model before
compression, student = the compressed copy; `keep_zeros` keeps the pruned weights at
exactly zero), and distillation as a method of its own (any student whose outputs have the
teacher's shape). The losses are pure functions over tensors; `distill` is the thin loop.

As a recipe stage (`{method: distill, steps: 100}` after a compression stage, or
`toolkit compress ... --recover kd`) the pipeline keeps a copy of the model from before
the first stage and passes it as `teacher=` to `compress.apply`; the handler refuses to
run without one. `distill(student, teacher, batches, config)` is the direct call.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from compress.config import MethodConfig, register_handler
from compress.distill_batches import batch_stream, device_of, to_device
from compress.errors import CompressError
from compress.sweep import Progress

# (model, batch) -> (logits [..., V], hidden states or None). Positions are every leading
# dim of the logits: [B, C] for a classifier, [B, L, V] for a causal LM.
ForwardFn = Callable[[nn.Module, Any], "tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]"]


@dataclasses.dataclass
class DistillConfig(MethodConfig):
    """Every knob of a distillation run; `__post_init__` rejects values that cannot train."""

    method: ClassVar[str] = "distill"
    adapter: ClassVar[str | None] = None

    # Optimizer steps (one batch each). Recovery needs few: MC-Suite's "lottery" fine-tune
    # after expert dropping used about 1M tokens (arXiv 2504.05586).
    steps: int = 100
    # AdamW learning rate; small, because recovery starts next to a good solution.
    lr: float = 1e-4
    # Softmax temperature T: > 1 exposes the teacher's ranking of the wrong classes
    # ("dark knowledge"), the signal hard labels lack (arXiv 1503.02531, section 2).
    temperature: float = 2.0
    # Weight of the KD term; 1 - alpha goes to cross-entropy on hard labels. Ignored
    # (pure KD) when no labels are passed, so the default 1.0 never needs labels.
    alpha: float = 1.0
    # beta: weight of hidden-state matching (0 = off). Needs a forward that returns hidden
    # states of the same shape in student and teacher (same width and depth).
    feature_weight: float = 0.0
    # Indices into the forward's hidden states to match (negative counts from the end);
    # None = all of them. For HF LMs index 0 is the embedding output and the last is the
    # final-normed state the head reads.
    feature_layers: tuple[int, ...] | None = None
    # Rows per step when `batches` is one tensor of samples [N, ...]; batches that come
    # as an iterable are used as they are.
    batch_size: int = 8
    # Seeds the sample order and the student's dropout; two runs with one seed are equal.
    seed: int = 0
    # AdamW's decoupled weight decay; 0, since shrinking weights away from the teacher's
    # is not what recovery wants.
    weight_decay: float = 0.0
    # Clip the global gradient norm (None = off): the first steps after pruning can have
    # large gradients that would throw the student far from the teacher.
    max_grad_norm: float | None = 1.0
    # Weights that are exactly zero before training (pruned) stay zero: recovery must not
    # undo pruning. Only >= 2-D tensors, so a bias or norm that is zero may still learn.
    keep_zeros: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise CompressError(f"steps {self.steps!r} must be an integer >= 1, e.g. 100")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or (
                self.batch_size < 1):
            raise CompressError(f"batch_size {self.batch_size!r} must be an integer >= 1")
        checks = [("lr", self.lr > 0, "> 0, e.g. 1e-4"),
                  ("temperature", self.temperature > 0, "> 0, e.g. 2.0"),
                  ("alpha", 0.0 <= self.alpha <= 1.0, "in [0, 1] (1 = pure KD)"),
                  ("feature_weight", self.feature_weight >= 0, ">= 0 (0 = off)"),
                  ("weight_decay", self.weight_decay >= 0, ">= 0"),
                  ("max_grad_norm", self.max_grad_norm is None or self.max_grad_norm > 0,
                   "> 0, or None for no clipping")]
        for name, ok, need in checks:
            if not ok:
                raise CompressError(f"{name} {getattr(self, name)!r} must be {need}")
        if self.feature_layers is not None:
            layers = ((self.feature_layers,) if isinstance(self.feature_layers, int)
                      else tuple(self.feature_layers))
            if not layers or not all(isinstance(i, int) for i in layers):
                raise CompressError(f"feature_layers {self.feature_layers!r} must be a "
                                    "non-empty list of layer indices, or None for all")
            self.feature_layers = layers


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
            temperature: float = 1.0) -> torch.Tensor:
    """T^2 * KL(softmax(z_t / T) || softmax(z_s / T)), Hinton et al. (arXiv 1503.02531).

    KL is summed over the last (class / vocabulary) dim and averaged over positions, every
    leading dim: images of [B, C] logits, tokens of [B, L, V] ones ("batchmean" over B*L,
    so long and short sequences weigh a token the same). The T^2 keeps the soft-target
    gradients, which scale as 1/T^2, comparable across temperatures and with the CE term.
    Computed in fp32; the teacher side is a constant (no gradient flows into it)."""
    if student_logits.shape != teacher_logits.shape:
        raise CompressError(f"student logits {tuple(student_logits.shape)} and teacher "
                            f"logits {tuple(teacher_logits.shape)} differ: distillation "
                            "needs the same classes / vocabulary in both")
    classes = student_logits.shape[-1]
    log_s = F.log_softmax(student_logits.float().reshape(-1, classes) / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits.detach().float().reshape(-1, classes) / temperature,
                          dim=-1)
    kl = F.kl_div(log_s, log_t, reduction="batchmean", log_target=True)
    return kl * temperature**2


def feature_loss(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor,
                 eps: float = 1e-12) -> torch.Tensor:
    """mean((h_s - h_t)^2) / mean(h_t^2): MSE relative to the teacher's mean square.

    Normalised because hidden-state scales differ by orders of magnitude across layers
    (a Llama's embedding output vs its final-normed state: ~1e-4 vs ~1), so plain MSE would
    only train the loudest layer. Feature matching as in FitNets (arXiv 1412.6550) and
    TinyBERT (arXiv 1909.10351); their projection for different widths is not done here."""
    if student_hidden.shape != teacher_hidden.shape:
        raise CompressError(f"student hidden state {tuple(student_hidden.shape)} and teacher "
                            f"{tuple(teacher_hidden.shape)} differ: feature matching needs "
                            "equal widths; set feature_weight=0")
    target = teacher_hidden.detach().float()
    mse = (student_hidden.float() - target).pow(2).mean()
    return mse / (target.pow(2).mean() + eps)


def lm_forward(model: nn.Module, batch: Any) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """A Hugging Face causal LM on token ids [B, L] (or a dict of its inputs): logits
    [B, L, V] and all hidden states (embeddings, every block, final norm)."""
    inputs = dict(batch) if isinstance(batch, Mapping) else {"input_ids": batch}
    out = model(**inputs, output_hidden_states=True, use_cache=False)
    return out.logits, tuple(out.hidden_states)


def classifier_forward(model: nn.Module, batch: Any) -> tuple[torch.Tensor, None]:
    """A plain classifier such as `models.vmoe.VisionMoE`: logits [B, C], no hidden states."""
    return model(batch), None


def task_forward(model: nn.Module, batch: Any) -> tuple[torch.Tensor, None]:
    """A network with `task_logits(x)` (classes on dim 1, models/channel_groups.py), e.g. a
    segmenter's [N, 3, H, W]: logits with the classes moved last ([N, H, W, 3]), so the KD
    loss (over the last dim, averaged over the leading ones) is the per-pixel KL averaged
    over pixels."""
    return model.task_logits(batch).movedim(1, -1), None


class FrozenNormStats(nn.Module):
    """The student seen through a wrapper whose train() leaves every batch norm in eval
    mode: a short recovery on batches of a few images would replace the running mean and
    variance the kept weights were fitted with by noisy batch estimates (and the teacher
    keeps its own); the norms' scale and shift still train."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def train(self, mode: bool = True) -> FrozenNormStats:
        super().train(mode)
        for norm in self.module.modules():
            if isinstance(norm, nn.modules.batchnorm._BatchNorm):
                norm.eval()
        return self

    def task_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.module.task_logits(x)

    def forward(self, x: Any) -> Any:
        return self.module(x)


def keep_zeros_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """{name: bool mask of the nonzero entries} for every trainable >= 2-D parameter that
    has exact zeros (pruned weights). Built once, before training changes anything.

    A tensor that is entirely zero is left out: that is a zero initialisation (a LoRA B
    matrix), not pruning, and freezing it would stop it from ever training. Any other exact
    zero counts as pruned, e.g. an embedding's zero padding row also stays zero."""
    masks = {}
    for name, param in model.named_parameters():
        if param.requires_grad and param.ndim >= 2:
            keep = param.detach() != 0
            if not bool(keep.all()) and bool(keep.any()):
                masks[name] = keep
    return masks


@dataclasses.dataclass
class DistillReport:
    """What `distill` did, for the manifest and the benchmark."""

    losses: list[float]  # total training loss per step, in order
    initial_kl: float | None  # KL(teacher || student) at T=1 on eval_batch, before training
    final_kl: float | None  # the same after training (None without an eval_batch)
    seconds: float  # wall-clock of the whole run, held-out evaluations included
    masked_tensors: int = 0  # parameters whose zeros were kept (keep_zeros)

    def manifest_section(self) -> dict:
        return {"kind": "distill", "steps": len(self.losses),
                "final_loss": self.losses[-1] if self.losses else None,
                "initial_kl": self.initial_kl, "final_kl": self.final_kl}


@dataclasses.dataclass
class DistillStageReport:
    """A distillation stage in a recipe, in the shape the pipeline records stages."""

    distilled: DistillReport
    forward_dtype: str = "float32"

    @property
    def seconds(self) -> dict[str, float]:
        return {"method": self.distilled.seconds}

    def manifest_section(self) -> dict:
        return self.distilled.manifest_section()


@register_handler(DistillConfig)
def distill_stage(model: nn.Module, config: DistillConfig, calib: torch.Tensor | None, *,
                  teacher: nn.Module | None = None, device: str | torch.device = "cpu",
                  labels: torch.Tensor | None = None, progress: Progress | None = None,
                  **_options: Any) -> DistillStageReport:
    """Recovery stage: distil `model` towards `teacher` on the calibration rows (token ids
    [N, L] for a causal LM, images [N, C, H, W] for an image model). The model's outputs
    are reached through an adapter: `task_logits` when it has one (per-pixel KL for a
    segmenter, norms' statistics frozen, `labels` [N, C, H, W] soft labels for the task
    term when alpha < 1), else its plain output for images, else a causal LM's logits."""
    if teacher is None:
        raise CompressError("distill needs a teacher: put it in a recipe after a compression "
                            "stage (the model before compression is the teacher)")
    if calib is None or calib.shape[0] == 0:
        raise CompressError("distill needs calibration data to train on")
    model.to(device)
    teacher.to(device)
    student, forward = model, lm_forward
    if callable(getattr(model, "task_logits", None)):
        student, forward = FrozenNormStats(model), task_forward
        labels = None if labels is None else labels.movedim(1, -1)
    elif calib.dtype.is_floating_point:
        forward = classifier_forward
    report = distill(student, teacher, calib, config, forward=forward,
                     labels=labels if config.alpha < 1.0 else None,
                     eval_batch=calib[:config.batch_size], progress=progress)
    return DistillStageReport(report)


def distill(student: nn.Module, teacher: nn.Module, batches: torch.Tensor | Iterable[Any],
            config: DistillConfig, *, labels: torch.Tensor | Iterable[Any] | None = None,
            forward: ForwardFn | None = None, eval_batch: Any | None = None,
            progress: Progress | None = None) -> DistillReport:
    """Train `student` in place for `config.steps` AdamW steps towards `teacher`.

    `batches`: one tensor of samples [N, ...] (shuffled with the seed, `batch_size` rows
    per step) or an iterable of ready batches (re-iterated, or cycled when it is a
    one-shot iterator). `labels`, if given, align with the samples: a tensor [N, ...] for a
    tensor, an iterable zipped with the batches otherwise; they align position by position
    with the logits (a causal LM's are the next tokens, -100 = ignored). The teacher runs in
    eval mode without gradients; the student trains, then is left in eval mode.
    `forward` adapts a model to (logits, hidden states): `lm_forward` (the default, for HF
    causal LMs) or `classifier_forward` (e.g. VisionMoE)."""
    forward = forward or lm_forward
    if student is teacher:
        raise CompressError("student and teacher are the same module: distill a copy "
                            "(e.g. teacher = copy.deepcopy(model) before compressing)")
    params = [p for p in student.parameters() if p.requires_grad]
    if not params:
        raise CompressError("the student has no trainable parameters (requires_grad=False)")
    device = params[0].device
    teacher_mode = teacher.training
    teacher.eval()
    start = time.perf_counter()
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):  # seed dropout, leak no RNG state
            torch.manual_seed(config.seed)
            initial = _held_out_kl(student, teacher, eval_batch, forward, device)
            masks = keep_zeros_masks(student) if config.keep_zeros else {}
            stream = batch_stream(batches, labels, config.batch_size, config.seed)
            losses = _train(student, teacher, params, masks, stream, config, forward,
                            progress)
            final = _held_out_kl(student, teacher, eval_batch, forward, device)
    finally:
        teacher.train(teacher_mode)
    return DistillReport(losses, initial, final, time.perf_counter() - start, len(masks))


def _train(student: nn.Module, teacher: nn.Module, params: list[torch.Tensor],
           masks: dict[str, torch.Tensor], stream: Iterator[tuple[Any, Any]],
           config: DistillConfig, forward: ForwardFn, progress: Progress | None) -> list[float]:
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    named = dict(student.named_parameters())
    device = params[0].device
    losses: list[float] = []
    student.train()
    try:
        for step in range(config.steps):
            batch, label = next(stream)
            batch = to_device(batch, device)
            loss = _step_loss(student, teacher, batch, to_device(label, device), config,
                              forward)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for name, keep in masks.items():
                # Pruned entries' gradients would inflate the clipped norm and shrink the
                # real update, and feed AdamW's moments for weights that must stay 0.
                if named[name].grad is not None:
                    named[name].grad.masked_fill_(~keep, 0.0)
            if config.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            with torch.no_grad():  # the guarantee: whatever the optimizer did, zeros stay 0
                for name, keep in masks.items():
                    named[name].masked_fill_(~keep, 0.0)  # +0.0, even over NaN
            losses.append(float(loss.detach()))
            if progress is not None:
                progress("distill", step + 1, config.steps)
    finally:
        student.eval()
    return losses


def _step_loss(student: nn.Module, teacher: nn.Module, batch: Any, label: Any,
               config: DistillConfig, forward: ForwardFn) -> torch.Tensor:
    """alpha * KD + (1 - alpha) * CE (labels given) + beta * feature loss, one batch."""
    with torch.no_grad():
        t_logits, t_hidden = forward(teacher, to_device(batch, device_of(teacher)))
    s_logits, s_hidden = forward(student, batch)
    loss = kd_loss(s_logits, t_logits.to(s_logits.device), config.temperature)
    if label is not None and config.alpha < 1.0:
        loss = config.alpha * loss + (1.0 - config.alpha) * label_loss(s_logits, label)
    if config.feature_weight > 0:
        loss = loss + config.feature_weight * _hidden_loss(s_hidden, t_hidden, config)
    return loss


def label_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the last dim, averaged over positions: against class indices
    (-100 = ignored), or against soft targets when `labels` are floats of the logits'
    shape (-sum_c y_c log softmax(z)_c, e.g. a segmenter's soft boundary labels)."""
    classes = logits.shape[-1]
    if labels.is_floating_point() and labels.shape == logits.shape:
        log_p = F.log_softmax(logits.float().reshape(-1, classes), dim=-1)
        return -(labels.float().reshape(-1, classes) * log_p).sum(dim=-1).mean()
    return F.cross_entropy(logits.float().reshape(-1, classes), labels.reshape(-1).long(),
                           ignore_index=-100)


def _hidden_loss(s_hidden: tuple[torch.Tensor, ...] | None,
                 t_hidden: tuple[torch.Tensor, ...] | None,
                 config: DistillConfig) -> torch.Tensor:
    if s_hidden is None or t_hidden is None:
        raise CompressError("feature_weight > 0 needs a forward that returns hidden states "
                            "(e.g. lm_forward); set feature_weight=0 for this model")
    if len(s_hidden) != len(t_hidden):
        raise CompressError(f"student has {len(s_hidden)} hidden states, teacher "
                            f"{len(t_hidden)}: pick matching ones with feature_layers")
    layers = config.feature_layers or tuple(range(len(t_hidden)))
    bad = [i for i in layers if not -len(t_hidden) <= i < len(t_hidden)]
    if bad:
        raise CompressError(f"feature_layers {bad} are out of range: the model returns "
                            f"{len(t_hidden)} hidden states")
    terms = [feature_loss(s_hidden[i], t_hidden[i].to(s_hidden[i].device)) for i in layers]
    return torch.stack(terms).mean()


@torch.no_grad()
def _held_out_kl(student: nn.Module, teacher: nn.Module, batch: Any, forward: ForwardFn,
                 device: torch.device) -> float | None:
    """KL(teacher || student) at T=1, both in eval mode: the true divergence, independent
    of the training temperature, so runs with different T compare."""
    if batch is None:
        return None
    student.eval()
    s_logits, _ = forward(student, to_device(batch, device))
    t_logits, _ = forward(teacher, to_device(batch, device_of(teacher)))
    return float(kd_loss(s_logits, t_logits.to(s_logits.device), 1.0))
