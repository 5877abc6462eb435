"""SparseMoeBlock (models/moe_lm.py) against a dense reference computed independently:
every expert on every token, the top-k picked by a full sort, gates renormalised by hand."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from models.errors import ModelError
from models.moe_groups import MoeGroup, RoutingRecord
from models.moe_lm import SparseMoeBlock, balance_loss

D, H, E = 16, 24, 5


def make_block(top_k: int, seed: int = 0) -> SparseMoeBlock:
    torch.manual_seed(seed)
    block = SparseMoeBlock(D, H, E, top_k, name="layer")
    with torch.no_grad():  # a router scale that gives distinct, well-separated choices
        block.router.weight.normal_(std=1.0)
    return block


def all_expert_outputs(block: SparseMoeBlock, x: torch.Tensor) -> torch.Tensor:
    """[E, T, D]: SwiGLU f_e(x) = W_down (silu(W_gate x) * W_up x), written out by hand."""
    gate = torch.einsum("td,ehd->eth", x, block.gate_proj)
    up = torch.einsum("td,ehd->eth", x, block.up_proj)
    hidden = gate * torch.sigmoid(gate) * up
    return torch.einsum("eth,edh->etd", hidden, block.down_proj)


def reference(block: SparseMoeBlock, x: torch.Tensor, allowed=None):
    """(output [T, D], chosen [T, k], gates [T, k], probs [T, E])."""
    logits = x @ block.router.weight.T
    if allowed is not None:
        blocked = [e for e in range(block.num_experts) if e not in allowed]
        logits[:, blocked] = -math.inf
    probs = torch.exp(logits - logits.max(dim=-1, keepdim=True).values)
    probs = probs / probs.sum(dim=-1, keepdim=True)
    k = min(block.top_k, len(allowed) if allowed is not None else block.num_experts)
    chosen = probs.argsort(dim=-1, descending=True)[:, :k]
    top = probs.gather(1, chosen)
    gates = top / top.sum(dim=-1, keepdim=True)
    outputs = all_expert_outputs(block, x)
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for slot in range(k):
            out[t] += gates[t, slot] * outputs[chosen[t, slot], t]
    return out, chosen, gates, probs


@pytest.mark.parametrize("top_k", [1, 2, 3, E])
def test_output_equals_dense_reference(top_k):
    block = make_block(top_k)
    x = torch.randn(3, 7, D)
    with torch.no_grad():
        out = block(x)
        expected, *_ = reference(block, x.reshape(-1, D))
    assert out.shape == x.shape
    torch.testing.assert_close(out.reshape(-1, D), expected, rtol=1e-5, atol=1e-6)


def test_block_is_a_routing_group():
    block = make_block(2)
    assert isinstance(block, MoeGroup)
    assert block.num_experts == E and block.top_k == 2
    assert block.router_weight().shape == (E, D)
    assert [tuple(p.shape) for p in block.expert_parameters()] == [(E, H, D), (E, H, D),
                                                                  (E, D, H)]


def test_recording_shapes_and_norms_match_independent_expert_outputs():
    block = make_block(2)
    block.recording = []
    batches = [torch.randn(2, 5, D), torch.randn(1, 3, D)]
    with torch.no_grad():
        for x in batches:
            block(x)
    assert len(block.recording) == 2
    for x, record in zip(batches, block.recording, strict=True):
        assert isinstance(record, RoutingRecord)
        flat = x.reshape(-1, D)
        t = flat.shape[0]
        _, chosen, gates, probs = reference(block, flat)
        assert record.router_probs.shape == (t, E) and record.chosen.shape == (t, 2)
        assert record.gates.shape == (t, 2) and record.expert_output_norms.shape == (t, 2)
        assert torch.equal(record.chosen, chosen)
        torch.testing.assert_close(record.gates, gates)
        torch.testing.assert_close(record.router_probs, probs)
        outputs = all_expert_outputs(block, flat)  # [E, T, D]
        norms = outputs[chosen, torch.arange(t)[:, None]].norm(dim=-1)
        torch.testing.assert_close(record.expert_output_norms, norms, rtol=1e-5, atol=1e-6)
        assert not record.router_probs.requires_grad
    block.recording = None
    with torch.no_grad():
        block(batches[0])  # no list: nothing recorded, nothing raised


@pytest.mark.parametrize("allowed", [[1, 3], [0, 2, 4], [2]])
def test_allowed_restricts_the_choices(allowed):
    block = make_block(2)
    block.allowed = allowed
    block.recording = []
    x = torch.randn(4, 6, D)
    with torch.no_grad():
        out = block(x)
    record = block.recording[0]
    assert set(record.chosen.unique().tolist()) <= set(allowed)
    assert record.chosen.shape[1] == min(2, len(allowed))
    blocked = [e for e in range(E) if e not in allowed]
    assert torch.all(record.router_probs[:, blocked] == 0)
    expected, chosen, _, _ = reference(block, x.reshape(-1, D), allowed=allowed)
    assert torch.equal(record.chosen, chosen)
    torch.testing.assert_close(out.reshape(-1, D), expected, rtol=1e-5, atol=1e-6)


def test_keep_only_slices_router_rows_and_experts():
    block = make_block(2)
    old = copy.deepcopy(block)
    keep = [3, 0, 2]
    x = torch.randn(5, 8, D)
    block.allowed = [0, 2, 3]
    block.keep_only(keep)
    assert block.allowed is None
    assert block.num_experts == 3 and block.router.out_features == 3
    torch.testing.assert_close(block.router.weight, old.router.weight[keep], rtol=0, atol=0)
    for new_p, old_p in zip(block.expert_parameters(), old.expert_parameters(), strict=True):
        torch.testing.assert_close(new_p, old_p[keep], rtol=0, atol=0)
    flat = x.reshape(-1, D)
    with torch.no_grad():
        for i, e in enumerate(keep):  # every kept expert computes what it did
            torch.testing.assert_close(block.expert(i, flat), old.expert(e, flat))
        new_out, old_out = block(x).reshape(-1, D), old(x).reshape(-1, D)
    # Tokens whose top-2 were both kept get the same experts, gates and output
    # (renormalised gates p_i / sum_S p_j do not depend on the dropped experts' p).
    _, old_chosen, _, _ = reference(old, flat)
    kept = torch.tensor([set(row.tolist()) <= set(keep) for row in old_chosen])
    assert kept.any() and not kept.all()
    torch.testing.assert_close(new_out[kept], old_out[kept], rtol=1e-5, atol=1e-6)


def test_keep_only_refuses_bad_subsets():
    block = make_block(2)
    for keep in ([], [0, 0], [0, E], [1]):
        with pytest.raises(ModelError):
            block.keep_only(keep)
    assert block.num_experts == E


def test_balance_loss_matches_the_switch_formula():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.5, 0.1, 0.4], [0.2, 0.2, 0.6]])
    chosen = torch.tensor([[0, 1], [1, 2], [0, 2], [2, 0]])
    # f = assignments per expert / (T k) = (3, 2, 3) / 8; P = column means.
    f = torch.tensor([3, 2, 3]) / 8
    p = probs.mean(dim=0)
    expected = 3 * float((f * p).sum())
    assert float(balance_loss(probs, chosen, 3)) == pytest.approx(expected, rel=1e-6)
    uniform = torch.full((6, 3), 1 / 3)
    assert float(balance_loss(uniform, torch.tensor([[0], [1], [2]] * 2), 3)) == \
        pytest.approx(1.0)


def test_balance_loss_kept_only_when_enabled_and_has_router_gradient():
    block = make_block(2)
    x = torch.randn(2, 5, D)
    block(x)
    assert block.last_balance_loss is None
    block.balance_loss_enabled = True
    out = block(x)
    loss = out.square().mean() + block.last_balance_loss
    loss.backward()
    assert block.router.weight.grad is not None and block.router.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in block.expert_parameters())
    block.balance_loss_enabled, block.last_balance_loss = False, None
    copy.deepcopy(block)  # a deep copy (distillation teacher) works once the loss is cleared


def test_constructor_refuses_top_k_above_experts():
    with pytest.raises(ModelError):
        SparseMoeBlock(D, H, 2, 3)
