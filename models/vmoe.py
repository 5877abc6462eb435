"""Mobile V-MoE: a ViT whose last blocks are mixtures of experts routed per IMAGE
(Daxberger et al., arXiv 2309.04354).

    z = mean_tokens(dense_blocks(patches + pos))        the image after the dense blocks
    l = W_r LayerNorm(z) + b_r                          router logits, one row per expert
    (g, e) = top_k(softmax(l))                          chosen experts e, gates g
    g <- g / sum(g)                                     (renormalised; k = 1 gives g = 1)
    MoE block: h = x + Attn(LN(x));  y = h + sum_i g_i * Expert_{e_i}(LN(h))

One router decides for the whole image and every MoE block uses its choice, so an image
pays for k expert MLPs per MoE block, never for all E. The chosen experts' weights are
gathered from stacked tensors by index (`index_select`), then applied with batched
matmuls: the graph has static shapes and no data-dependent dispatch (`nonzero`,
`index_add`), which is what lets it export to ONNX, LiteRT and Core ML alike.

Training adds lambda * CE(router_logits, superclass) with lambda = 0.3 (super-classes from
clustering a dense model's confusion matrix); `forward_with_routing` returns the router
logits for it. Expert dropping (MC-Suite, arXiv 2504.05586) deletes experts and their
router rows: `drop_experts`.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn
from torch.nn import functional as F

from models.errors import ModelError
from models.fake_cnn import smooth_images
from models.moe_groups import MoeGroup, RoutingRecord, restricted_logits
from models.registry import LoadedModel, register_model
from models.vision_input import VisionInput


@dataclasses.dataclass(frozen=True)
class VMoEConfig:
    image_size: int = 224
    patch_size: int = 16
    channels: int = 3
    num_classes: int = 1000
    dim: int = 192
    depth: int = 12
    heads: int = 3
    # Expert (and dense MLP) width = dim * mlp_ratio, as in ViT.
    mlp_ratio: float = 4.0
    # The last `moe_layers` blocks are MoE; the paper found L = 2 best. 0 = dense ViT.
    moe_layers: int = 2
    # E = 10 is the paper's best on ImageNet-1k (also the number of super-classes).
    num_experts: int = 10
    # The paper routes each image to k = 1 expert: one expert's cost per MoE block.
    top_k: int = 1
    # True: gates are the top-k probabilities renormalised to sum to 1, so k = 1 gives
    # gate 1.0 (the expert's output is not shrunk by router doubt; the router then learns
    # only from the super-class loss, the paper's guided router). False: the literal
    # g = top_k(softmax(l)) of the paper's formula, which also passes the classification
    # gradient to the router (its "end-to-end" per-image ablation).
    renormalize: bool = True
    dropout: float = 0.0

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ModelError(f"image_size {self.image_size} is not a multiple of patch_size "
                             f"{self.patch_size}: pick sizes that tile the image")
        if self.dim % self.heads:
            raise ModelError(f"dim {self.dim} is not divisible by heads {self.heads}")
        if not 0 <= self.moe_layers <= self.depth:
            raise ModelError(f"moe_layers must be in 0..depth ({self.depth}), "
                             f"got {self.moe_layers}")
        if self.moe_layers and not 1 <= self.top_k <= self.num_experts:
            raise ModelError(f"top_k must be in 1..num_experts ({self.num_experts}), "
                             f"got {self.top_k}")

    @property
    def tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def hidden(self) -> int:
        return int(self.dim * self.mlp_ratio)


# Fashion-MNIST, sized to train on 2 CPU cores in minutes: 7x7 patches give 16 tokens of
# width 64 (about 11 MFLOPs per image; 4x4 patches, 49 tokens, cost 3x as much and took
# ~14 min per epoch-pair per model here). E = 4, not 10: with 10 classes, 10
# super-classes would be one class each and the router a second classifier; a dense
# model's confusions group into about 4 (tops, footwear, trousers/dresses, bags).
FASHION_MNIST = VMoEConfig(image_size=28, patch_size=7, channels=1, num_classes=10, dim=64,
                           depth=6, heads=4, mlp_ratio=4.0, moe_layers=2, num_experts=4)
# ViT-Tiny on ImageNet-1k (the paper's main setting): 196 tokens, E = 10, L = 2, k = 1.
VIT_TINY_IMAGENET = VMoEConfig(image_size=224, patch_size=16, channels=3, num_classes=1000,
                               dim=192, depth=12, heads=3, mlp_ratio=4.0, moe_layers=2,
                               num_experts=10)


@dataclasses.dataclass
class VMoEOutput:
    logits: torch.Tensor  # [B, num_classes]
    router_logits: torch.Tensor | None  # [B, E]; None for a dense model
    experts: torch.Tensor | None  # [B, k] chosen expert indices
    gates: torch.Tensor | None  # [B, k] combine weights


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.drop(self.proj(out.transpose(1, 2).reshape(b, n, d)))


class DenseMlp(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))


class ExpertMlps(nn.Module):
    """E expert MLPs as stacked tensors (expert e: fc2 @ gelu(fc1 @ x + b1) + b2, the same
    math as DenseMlp) applied per image to the experts the router chose."""

    def __init__(self, num_experts: int, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.fc1_weight = nn.Parameter(torch.empty(num_experts, hidden, dim))
        self.fc1_bias = nn.Parameter(torch.zeros(num_experts, hidden))
        self.fc2_weight = nn.Parameter(torch.empty(num_experts, dim, hidden))
        self.fc2_bias = nn.Parameter(torch.zeros(num_experts, dim))
        self.drop = nn.Dropout(dropout)
        # While a list: each forward appends ||f_e(x)||_F^2 per image [B] for slot 0..k-1.
        self.output_sq_norms: list[torch.Tensor] | None = None

    @property
    def num_experts(self) -> int:
        return self.fc1_weight.shape[0]

    @property
    def params_per_expert(self) -> int:
        return sum(p[0].numel() for p in self.parameters())

    def forward(self, x: torch.Tensor, experts: torch.Tensor, gates: torch.Tensor
                ) -> torch.Tensor:
        """x [B, N, D]; experts [B, k] int64; gates [B, k]. The same code serves batch 1
        and batch B: each image gets its own gathered [hidden, D] matrices, and k is a
        static size, so the loop unrolls at export."""
        out = None
        for slot in range(experts.shape[1]):
            index = experts[:, slot]
            w1 = self.fc1_weight.index_select(0, index)  # [B, hidden, D]
            b1 = self.fc1_bias.index_select(0, index).unsqueeze(1)  # [B, 1, hidden]
            w2 = self.fc2_weight.index_select(0, index)  # [B, D, hidden]
            b2 = self.fc2_bias.index_select(0, index).unsqueeze(1)
            h = F.gelu(torch.baddbmm(b1, x, w1.transpose(1, 2)))
            y = torch.baddbmm(b2, h, w2.transpose(1, 2))
            if self.output_sq_norms is not None:  # expert dropping's calibration
                self.output_sq_norms.append(y.detach().square().sum(dim=(1, 2)))
            y = y * gates[:, slot, None, None]
            out = y if out is None else out + y
        return self.drop(out)

    def keep_only(self, keep: torch.Tensor) -> None:
        for name in ("fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias"):
            setattr(self, name, nn.Parameter(getattr(self, name).detach()[keep].clone()))


class Block(nn.Module):
    """Pre-norm transformer block; its MLP is dense or a set of experts."""

    def __init__(self, config: VMoEConfig, moe: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.dim)
        self.attn = Attention(config.dim, config.heads, config.dropout)
        self.norm2 = nn.LayerNorm(config.dim)
        self.mlp = (ExpertMlps(config.num_experts, config.dim, config.hidden, config.dropout)
                    if moe else DenseMlp(config.dim, config.hidden, config.dropout))

    def forward(self, x: torch.Tensor, routing: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        h = self.norm2(x)
        return x + (self.mlp(h) if routing is None else self.mlp(h, *routing))


class VisionMoE(nn.Module):
    """Conv patch embedding + learned position embeddings, `depth - moe_layers` dense
    blocks, the per-image router, `moe_layers` MoE blocks, LayerNorm, mean pooling, head.

    Mean pooling (no class token) for the head: the router already reads a token mean, a
    class token would be one more token to attend over and a concat in the exported graph,
    and global average pooling matches a class token on ViT-S/Tiny (arXiv 2205.01580)."""

    def __init__(self, config: VMoEConfig):
        super().__init__()
        self.config = config
        self.patch_embed = nn.Conv2d(config.channels, config.dim, config.patch_size,
                                     stride=config.patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, config.tokens, config.dim))
        first_moe = config.depth - config.moe_layers
        self.blocks = nn.ModuleList(Block(config, moe=i >= first_moe)
                                    for i in range(config.depth))
        # The residual stream is not normalised in a pre-norm ViT: LayerNorm keeps the
        # router's logits on a scale that does not drift with depth or training.
        self.router_norm = nn.LayerNorm(config.dim) if config.moe_layers else None
        self.router = nn.Linear(config.dim, config.num_experts) if config.moe_layers else None
        self.norm = nn.LayerNorm(config.dim)
        self.head = nn.Linear(config.dim, config.num_classes)
        self.last_router_logits: torch.Tensor | None = None
        # Expert dropping (models.moe_groups): the experts the router may choose (None =
        # all) and, while a list, one RoutingRecord per forward.
        self.allowed_experts: list[int] | None = None
        self.routing_recording: list[RoutingRecord] | None = None
        self.apply(_init_vit)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    @property
    def first_moe(self) -> int:
        return self.config.depth - self.config.moe_layers

    def dense_features(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens [B, N, D] after the dense blocks: what the router reads."""
        x = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed
        for block in self.blocks[:self.first_moe]:
            x = block(x)
        return x

    def route(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Router logits [B, E], chosen experts [B, k] and gates [B, k] for each image."""
        logits = self.router(self.router_norm(tokens.mean(dim=1)))
        probs = restricted_logits(logits, self.allowed_experts).softmax(dim=-1)
        top_p, experts = probs.topk(self.config.top_k, dim=-1)
        gates = top_p / top_p.sum(dim=-1, keepdim=True) if self.config.renormalize else top_p
        return logits, experts, gates

    def forward_with_routing(self, x: torch.Tensor) -> VMoEOutput:
        tokens = self.dense_features(x)
        logits = experts = gates = None
        if self.router is not None:
            logits, experts, gates = self.route(tokens)
            recording = self.routing_recording is not None
            moe_blocks = self.blocks[self.first_moe:]
            for block in moe_blocks:
                block.mlp.output_sq_norms = [] if recording else None
                tokens = block(tokens, (experts, gates))
            if recording:
                self.routing_recording.append(_routing_record(
                    logits, self.allowed_experts, experts, gates, moe_blocks))
        out = self.head(self.norm(tokens).mean(dim=1))
        return VMoEOutput(out, logits, experts, gates)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits [B, num_classes]; the router's logits stay, detached, in
        `last_router_logits` for inspection. Training reads them with their gradient from
        `forward_with_routing` (+ 0.3 * CE(router_logits, superclass)): a module holding a
        graph tensor could not be deep-copied (a distillation teacher is a deep copy)."""
        output = self.forward_with_routing(x)
        if not torch.compiler.is_compiling():  # an attribute write is a side effect in export
            logits = output.router_logits
            self.last_router_logits = None if logits is None else logits.detach()
        return output.logits

    def moe_groups(self) -> list[MoeGroup]:
        """One group: the single per-image router and its experts in every MoE block."""
        return [] if self.router is None else [ImageRoutingGroup(self)]

    def expert_choice(self, x: torch.Tensor) -> torch.Tensor:
        """The experts [B, k] each image is routed to; runs only the dense blocks."""
        if self.router is None:
            raise ModelError("this is a dense model (moe_layers=0): it has no experts")
        return self.route(self.dense_features(x))[1]


def _routing_record(logits: torch.Tensor, allowed: list[int] | None, experts: torch.Tensor,
                    gates: torch.Tensor, moe_blocks: nn.ModuleList) -> RoutingRecord:
    """One image = one routed unit; its expert output norm spans every MoE block:
    ||f_e(x)|| = sqrt(sum over blocks of ||f_e^l(h^l)||_F^2)."""
    squares = torch.stack([torch.stack(block.mlp.output_sq_norms) for block in moe_blocks])
    for block in moe_blocks:
        block.mlp.output_sq_norms = None
    norms = squares.sum(dim=0).sqrt().T  # [L, k, B] -> [B, k]
    probs = restricted_logits(logits, allowed).softmax(dim=-1)
    return RoutingRecord(probs.detach().cpu(), experts.detach().cpu(), gates.detach().cpu(),
                         norms.cpu())


def _init_vit(module: nn.Module) -> None:
    # ViT's initialisation: truncated normal(0.02) weights, zero biases, unit LayerNorms.
    if isinstance(module, nn.Linear | nn.Conv2d):
        nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)
    elif isinstance(module, ExpertMlps):
        nn.init.trunc_normal_(module.fc1_weight, std=0.02)
        nn.init.trunc_normal_(module.fc2_weight, std=0.02)


def dense_baseline(config: VMoEConfig) -> VisionMoE:
    """The dense ViT with the same per-image compute: every block has a dense MLP of the
    experts' width (moe_layers=0). With k = 1 an MoE image runs one expert per MoE block,
    which costs what that dense MLP costs, so
        flops_per_image(moe) = flops_per_image(dense) + 2 * dim * E   (the router).
    For k > 1 each MoE block costs k MLPs (see flops_per_image)."""
    return VisionMoE(dataclasses.replace(config, moe_layers=0))


def flops_per_image(config: VMoEConfig) -> int:
    """Matmul and convolution FLOPs (2 per multiply-add) of one image; norms, GELU and
    softmax are left out. With N tokens, width D, MLP width H, patch P, C channels:
        patch 2*N*D*C*P^2;  attention per block 2*N*(4*D^2 + 2*N*D);  MLP 4*N*D*H,
        times k in an MoE block;  router 2*D*E;  head 2*D*classes."""
    n, d, h = config.tokens, config.dim, config.hidden
    mlp = 4 * n * d * h
    moe, dense = config.moe_layers, config.depth - config.moe_layers
    return (2 * n * d * config.channels * config.patch_size ** 2
            + config.depth * 2 * n * (4 * d * d + 2 * n * d)
            + dense * mlp + moe * config.top_k * mlp
            + (2 * d * config.num_experts if moe else 0) + 2 * d * config.num_classes)


def count_params(model: VisionMoE) -> tuple[int, int]:
    """(total parameters, parameters one image activates): an image uses k of the E
    experts in each MoE block and every other parameter (router included)."""
    total = sum(p.numel() for p in model.parameters())
    idle = sum((m.num_experts - model.config.top_k) * m.params_per_expert
               for m in model.modules() if isinstance(m, ExpertMlps))
    return total, total - idle


def drop_experts(model: VisionMoE, keep: list[int]) -> VisionMoE:
    """Keep only the experts in `keep` (in that order: new expert i is old expert keep[i])
    in every MoE block, and the router's rows for them, so a dropped expert can never be
    chosen (arXiv 2504.05586: the router goes from E to E - r outputs). In place; the
    model is returned for chaining."""
    experts = model.config.num_experts
    if model.router is None:
        raise ModelError("this is a dense model (moe_layers=0): it has no experts to drop")
    if not keep or len(set(keep)) != len(keep) or not all(0 <= e < experts for e in keep):
        raise ModelError(f"keep must list distinct experts in 0..{experts - 1}, got {keep}")
    if len(keep) < model.config.top_k:
        raise ModelError(f"keep {len(keep)} experts at least: top_k is {model.config.top_k}")
    index = torch.tensor(keep, dtype=torch.long)
    for module in model.modules():
        if isinstance(module, ExpertMlps):
            module.keep_only(index)
    old = model.router
    model.router = nn.Linear(old.in_features, len(keep), device=old.weight.device,
                             dtype=old.weight.dtype)
    with torch.no_grad():
        model.router.weight.copy_(old.weight[index])
        model.router.bias.copy_(old.bias[index])
    model.config = dataclasses.replace(model.config, num_experts=len(keep))
    return model


class ImageRoutingGroup:
    """The V-MoE's one routing group (models.moe_groups.MoeGroup): the per-image router and
    expert e of every MoE block, which it always picks together."""

    def __init__(self, model: VisionMoE):
        self.model = model
        self.name = "router"

    @property
    def recording(self) -> list[RoutingRecord] | None:
        return self.model.routing_recording

    @recording.setter
    def recording(self, value: list[RoutingRecord] | None) -> None:
        self.model.routing_recording = value

    @property
    def allowed(self) -> list[int] | None:
        return self.model.allowed_experts

    @allowed.setter
    def allowed(self, value: list[int] | None) -> None:
        self.model.allowed_experts = value

    @property
    def num_experts(self) -> int:
        return self.model.config.num_experts

    @property
    def top_k(self) -> int:
        return self.model.config.top_k

    def router_weight(self) -> torch.Tensor:
        return self.model.router.weight

    def expert_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.model.modules() if isinstance(m, ExpertMlps)
                for p in m.parameters()]

    def keep_only(self, keep: list[int]) -> None:
        self.model.allowed_experts = None
        drop_experts(self.model, keep)


FAKE_SEED = 0
FAKE_MEAN, FAKE_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
FAKE_CONFIG = VMoEConfig(image_size=16, patch_size=4, channels=3, num_classes=10, dim=32,
                         depth=3, heads=2, mlp_ratio=2.0, moe_layers=2, num_experts=4)


def fake_images(count: int, seed: int) -> torch.Tensor:
    return smooth_images(count, seed, size=FAKE_CONFIG.image_size)


@register_model("fake-vmoe", family="vmoe", weights="random, generated (tests)",
                description="per-image routed ViT MoE on 16x16 RGB, 4 experts, 10 classes",
                fake=True)
def fake_vmoe() -> LoadedModel:
    torch.manual_seed(FAKE_SEED)
    module = VisionMoE(FAKE_CONFIG)
    with torch.no_grad():
        # ViT's init makes every expert nearly the zero map and the router nearly
        # uniform; a fake whose experts differ and whose router picks different experts
        # for different images lets tests see a wrong gather or a wrong route.
        for name, param in module.named_parameters():
            if name.endswith("bias") or name.endswith("pos_embed"):
                param.uniform_(-0.2, 0.2)
            elif param.dim() > 1:  # stacked experts [E, out, in]: fan-in is the last size
                fan_in = param.shape[-1] if param.dim() == 3 else param[0].numel()
                param.normal_(0.0, 1.0 / math.sqrt(fan_in))
        # Random weights still send most images to one expert (the pooled tokens share a
        # common direction); centring the router's logits on the fake's own images spreads
        # them over all experts.
        mean, std = torch.tensor(FAKE_MEAN).view(1, -1, 1, 1), torch.tensor(FAKE_STD).view(
            1, -1, 1, 1)
        pixels = (fake_images(256, seed=1000) / 255 - mean) / std
        pooled = module.router_norm(module.dense_features(pixels).mean(dim=1))
        module.router.bias.copy_(-(pooled @ module.router.weight.T).mean(dim=0))
    return LoadedModel(module=module.eval(), tokenizer=None, source="fake-vmoe",
                       vision=VisionInput((1, FAKE_CONFIG.channels, FAKE_CONFIG.image_size,
                                           FAKE_CONFIG.image_size),
                                          mean=FAKE_MEAN, std=FAKE_STD, images=fake_images))
