"""Boundary-sensitive portrait segmenter (Du et al., arXiv 1712.08675) on a mobile
encoder-decoder: a MobileNetV2-style inverted-residual encoder (arXiv 1801.04381) and a
light U-Net decoder that adds the encoder's skips back at 1/16, 1/8, 1/4 and 1/2.

    inverted residual:  y = [x +] BN(W_proj * ReLU6(BN(W_dw (*) ReLU6(BN(W_exp * x)))))
    decoder stage:      y = IR(up(ReLU6(BN(W_red * deep)), size(skip)) + skip)
    training outputs:   l = up(W_head * y_1/2) in R^{3 x H x W}  (background, foreground,
                        boundary), a = W_attr mean_hw(encoder output)  (hair style)
    deployed output:    p_fg = softmax(l)_fg + 0.5 * softmax(l)_boundary   in [0, 1]

The three classes are the paper's individual boundary-sensitive kernel: boundary pixels
are trained against soft labels over {bg, fg, boundary}. A boundary pixel's soft label
puts its remaining mass on its own side of the contour, so p_fg + p_boundary / 2 is above
0.5 inside and below it outside (see toolkit/data/portraits/boundary.py), and the
deployed map is one foreground probability, like MediaPipe's selfie segmenter.

Only ops that ONNX, LiteRT and Core ML convert: conv, depthwise conv, batch norm
(foldable), ReLU6, bilinear resize to a static size, add, mean, softmax, slice. Every
inverted residual keeps its expand / depthwise / project convs and norms as named
modules so a structured pruner can drop expansion channels (models/portrait_surgery.py).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from models.errors import ModelError
from models.fake_cnn import smooth_images
from models.registry import LoadedModel, register_model
from models.vision_input import VisionInput

CLASSES = ("background", "foreground", "boundary")
# (expansion t, output channels c, repeats n, first stride s), as in MobileNetV2's table
# but narrower and shallower: a portrait mask needs coarse context and sharp edges, not
# 1000-way features. Five stride-2 steps in all (with the stem): deepest at 1/32.
ENCODER_STAGES = ((1, 16, 1, 1), (4, 24, 2, 2), (4, 32, 3, 2), (4, 64, 2, 2),
                  (4, 96, 2, 1), (4, 128, 2, 2))
# Which encoder stages feed a decoder skip (their outputs at 1/2, 1/4, 1/8, 1/16).
SKIP_STAGES = (0, 1, 2, 4)


@dataclasses.dataclass(frozen=True)
class PortraitConfig:
    height: int = 256
    width: int = 256
    # Scales every channel count (rounded to multiples of 8, as MobileNet does, which
    # mobile GPUs and NPUs vector-load best); 0.5 gives a ~4x smaller network.
    width_mult: float = 1.0
    # Hair-style classes of the attribute head (the generator's short, long, curly, bun).
    num_attributes: int = 4
    # Expansion of the decoder's refining inverted residuals: kept low because they run
    # at 1/2 and 1/4 resolution, where most of a segmenter's FLOPs go.
    decoder_expansion: int = 2
    # Hidden (expansion) width of every block that has an expand conv, in module order,
    # when a structured pruner made them irregular; () = t * input channels everywhere.
    hidden_channels: tuple[int, ...] = ()

    def __post_init__(self):
        if self.height % 16 or self.width % 16 or min(self.height, self.width) < 32:
            raise ModelError(f"portrait input {self.height}x{self.width} must be at least "
                             "32 and a multiple of 16 on each side (the skips at 1/16)")
        if not 0.1 <= self.width_mult <= 4:
            raise ModelError(f"width_mult {self.width_mult} is outside 0.1..4")
        if self.num_attributes < 1:
            raise ModelError("num_attributes must be at least 1")


def scaled_channels(channels: int, width_mult: float) -> int:
    """round(c * width_mult) to the nearest multiple of 8, never below 8 or 90% of it."""
    value = max(8, int(channels * width_mult + 4) // 8 * 8)
    return value + 8 if value < 0.9 * channels * width_mult else value


class ConvBnAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1,
                 act: bool = True):
        layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
                  nn.BatchNorm2d(cout)]
        super().__init__(*layers, *([nn.ReLU6()] if act else []))


class InvertedResidual(nn.Module):
    """expand 1x1 -> depthwise 3x3 -> project 1x1 (linear), residual when shapes match.
    `hidden` is the expansion width; expand_* is None when the block has no expansion
    (t = 1: the depthwise conv runs on the input channels)."""

    def __init__(self, cin: int, cout: int, stride: int, hidden: int, expand: bool):
        super().__init__()
        if expand:
            self.expand_conv = nn.Conv2d(cin, hidden, 1, bias=False)
            self.expand_bn = nn.BatchNorm2d(hidden)
        else:
            if hidden != cin:
                raise ModelError(f"a block without expansion has hidden = in = {cin}")
            self.expand_conv = self.expand_bn = None
        self.depthwise_conv = nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False)
        self.depthwise_bn = nn.BatchNorm2d(hidden)
        self.project_conv = nn.Conv2d(hidden, cout, 1, bias=False)
        self.project_bn = nn.BatchNorm2d(cout)
        self.residual = stride == 1 and cin == cout

    @property
    def hidden(self) -> int:
        return self.depthwise_conv.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.expand_conv is not None:
            h = F.relu6(self.expand_bn(self.expand_conv(h)))
        h = F.relu6(self.depthwise_bn(self.depthwise_conv(h)))
        h = self.project_bn(self.project_conv(h))
        return x + h if self.residual else h


class DecoderStage(nn.Module):
    """Reduce the deeper map to the skip's width, resize it to the skip's size, add the
    skip, refine with one inverted residual."""

    def __init__(self, deep: int, skip: int, hidden: int):
        super().__init__()
        self.reduce = ConvBnAct(deep, skip)
        self.refine = InvertedResidual(skip, skip, 1, hidden, expand=True)

    def forward(self, deep: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        # Static at export: the input size is fixed, so skip.shape is a constant.
        up = F.interpolate(self.reduce(deep), size=skip.shape[-2:], mode="bilinear",
                           align_corners=False)
        return self.refine(up + skip)


class PortraitOutputs(NamedTuple):
    logits: torch.Tensor  # [N, 3, H, W] over CLASSES
    attributes: torch.Tensor  # [N, num_attributes] hair-style logits


class PortraitSegmenter(nn.Module):
    def __init__(self, config: PortraitConfig):
        super().__init__()
        self.config = config
        c = [scaled_channels(ch, config.width_mult) for _, ch, _, _ in ENCODER_STAGES]
        stem = scaled_channels(16, config.width_mult)
        plan = _block_plan(stem, c)
        hidden = _hidden_widths(config, plan, c)
        self.stem = ConvBnAct(3, stem, 3, stride=2)
        self.encoder = nn.ModuleList(
            InvertedResidual(cin, cout, stride, width, expand)
            for (cin, cout, stride, expand, _), width in zip(plan, hidden[:len(plan)],
                                                             strict=True))
        # Index of the last block of every stage: where the skips are tapped.
        repeats = [n for _, _, n, _ in ENCODER_STAGES]
        self.stage_ends = [sum(repeats[:stage + 1]) - 1 for stage in range(len(repeats))]
        skips = [c[s] for s in SKIP_STAGES]
        deeper = [c[-1], *skips[:0:-1]]  # 1/32 feeds 1/16, which feeds 1/8, ...
        dec_hidden = hidden[len(plan):]
        self.decoder = nn.ModuleList(
            DecoderStage(d, s, h) for d, s, h in zip(deeper, skips[::-1], dec_hidden,
                                                     strict=True))
        self.head = nn.Conv2d(skips[0], len(CLASSES), 1)
        self.attribute_head = nn.Linear(c[-1], config.num_attributes)
        _init_weights(self)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(deepest encoder map at 1/32, skips at 1/2, 1/4, 1/8, 1/16)."""
        h = self.stem(x)
        taps = {self.stage_ends[s] for s in SKIP_STAGES}
        skips = []
        for index, block in enumerate(self.encoder):
            h = block(h)
            if index in taps:
                skips.append(h)
        return h, skips

    def decode(self, deepest: torch.Tensor, skips: list[torch.Tensor], size: tuple[int, int]
               ) -> torch.Tensor:
        h = deepest
        for stage, skip in zip(self.decoder, skips[::-1], strict=True):
            h = stage(h, skip)
        return F.interpolate(self.head(h), size=size, mode="bilinear", align_corners=False)

    def forward_train(self, x: torch.Tensor) -> PortraitOutputs:
        """3-class logits at input resolution and hair-style logits (training outputs)."""
        deepest, skips = self.features(x)
        logits = self.decode(deepest, skips, x.shape[-2:])
        return PortraitOutputs(logits, self.attribute_head(deepest.mean(dim=(2, 3))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Deployed output: foreground probability [N, 1, H, W]; no attribute head."""
        deepest, skips = self.features(x)
        return foreground_probability(self.decode(deepest, skips, x.shape[-2:]))

    # The channel-group protocol (models/channel_groups.py): structured pruning and
    # distillation reach the segmenter only through these.
    def channel_groups(self) -> list:
        from models.portrait_surgery import expansion_groups

        return expansion_groups(self)

    def keep_channels(self, keep) -> None:
        from models.portrait_surgery import keep_expansion_channels

        keep_expansion_channels(self, keep)

    def task_logits(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] logits over CLASSES: what the losses and the KD term read."""
        return self.forward_train(x).logits

    def example_input(self) -> torch.Tensor:
        return torch.zeros(1, 3, self.config.height, self.config.width)

    def flops(self) -> int:
        return count_flops(self)


def foreground_probability(logits: torch.Tensor) -> torch.Tensor:
    """p_fg + 0.5 * p_boundary from 3-class logits [N, 3, H, W] -> [N, 1, H, W].

    Written as (e_fg + 0.5 e_boundary) / sum_c e_c with e = exp(l - max_c l), the softmax
    spelled out: a Softmax over the channel axis of an NCHW map is lowered with
    transposes (onnxruntime spent 7-8 ms of a ~19 ms portrait-256 run on it), while these
    element-wise ops stay in layout. Same value up to float rounding."""
    e = (logits - logits.amax(dim=1, keepdim=True)).exp()
    return (e[:, 1:2] + 0.5 * e[:, 2:3]) / e.sum(dim=1, keepdim=True)


def _block_plan(stem: int, c: list[int]) -> list[tuple[int, int, int, bool, int]]:
    """(in, out, stride, has expand conv, expansion t) of every encoder block in order."""
    plan, cin = [], stem
    for (t, _, repeats, stride), cout in zip(ENCODER_STAGES, c, strict=True):
        for i in range(repeats):
            plan.append((cin, cout, stride if i == 0 else 1, t != 1, t))
            cin = cout
    return plan


def _hidden_widths(config: PortraitConfig, plan: list[tuple[int, int, int, bool, int]],
                   c: list[int]) -> list[int]:
    """Hidden width of every encoder block, then of every decoder refine block; the
    config's hidden_channels override those of the blocks with an expand conv."""
    encoder = [cin * t for cin, _, _, _, t in plan]
    decoder = [c[s] * config.decoder_expansion for s in SKIP_STAGES[::-1]]
    expandable = [i for i, (_, _, _, expand, _) in enumerate(plan) if expand]
    expandable += list(range(len(plan), len(plan) + len(decoder)))
    widths = encoder + decoder
    if config.hidden_channels:
        if len(config.hidden_channels) != len(expandable):
            raise ModelError(f"hidden_channels has {len(config.hidden_channels)} entries but "
                             f"the network has {len(expandable)} blocks with expansion")
        for index, width in zip(expandable, config.hidden_channels, strict=True):
            if width < 1:
                raise ModelError("every block needs at least one hidden channel")
            widths[index] = width
    return widths


def _init_weights(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.01)
            nn.init.zeros_(module.bias)


def count_flops(model: PortraitSegmenter, training: bool = False) -> int:
    """FLOPs of one image (2 per multiply-add) of every conv and linear that runs, from
    the layer shapes seen in one forward: conv 2*H_out*W_out*C_out*(C_in/groups)*k*k,
    linear 2*in*out. Biases, norms (folded at export), activations, resizes and the
    softmax are left out. `training` adds the attribute head (not in the deployed graph)."""
    total = 0

    def count(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            per_output = module.in_channels // module.groups * kh * kw
            total += output[0].numel() * 2 * per_output
        elif isinstance(module, nn.Linear):
            total += module.out_features * 2 * module.in_features

    hooks = [m.register_forward_hook(count) for m in model.modules()
             if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            x = torch.zeros(1, 3, model.config.height, model.config.width)
            model.forward_train(x) if training else model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return total


# Inputs in [-1, 1], as MediaPipe's selfie segmenter takes [0, 1] images rescaled.
MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
FAKE_CONFIG = PortraitConfig(height=32, width=48, width_mult=0.25, num_attributes=3)
FAKE_SEED = 0


def portrait_model(config: PortraitConfig, source: str) -> LoadedModel:
    module = PortraitSegmenter(config).eval()

    def images(count: int, seed: int) -> torch.Tensor:
        # Placeholder images until a trained artifact carries its own data source:
        # models/ may not import the generator in toolkit/data/portraits.
        return smooth_images(count, seed, size=max(config.height, config.width))[
            ..., :config.height, :config.width]

    return LoadedModel(module=module, tokenizer=None, source=source,
                       vision=VisionInput((1, 3, config.height, config.width), mean=MEAN,
                                          std=STD, images=images))


@register_model("portrait-256", family="portrait",
                weights="random init (untrained until `toolkit train portrait`)",
                description="boundary-sensitive portrait segmenter, 256x256, MobileNetV2-style")
def portrait_256() -> LoadedModel:
    torch.manual_seed(0)
    return portrait_model(PortraitConfig(256, 256), "portrait-256")


@register_model("portrait-144x256", family="portrait",
                weights="random init (untrained until `toolkit train portrait`)",
                description="boundary-sensitive portrait segmenter, 144x256 landscape")
def portrait_144x256() -> LoadedModel:
    torch.manual_seed(0)
    return portrait_model(PortraitConfig(144, 256), "portrait-144x256")


@register_model("fake-portrait", family="portrait", weights="random, generated (tests)",
                description="portrait segmenter on 32x48 RGB, width 0.25", fake=True)
def fake_portrait() -> LoadedModel:
    torch.manual_seed(FAKE_SEED)
    loaded = portrait_model(FAKE_CONFIG, "fake-portrait")
    with torch.no_grad():  # batch norms that are not the identity when folded
        for module in loaded.module.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return loaded
