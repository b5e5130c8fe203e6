"""``--optimizer unival_adam`` (fused AdamW) makes the same updates as fairseq's ``adam``."""
import copy

import pytest
import torch
from fairseq.optim import build_optimizer
from fairseq.optim.adam import FairseqAdam, FairseqAdamConfig
from omegaconf import OmegaConf

import unival  # noqa: F401  (registers unival_adam)
from unival.optim import UnivalAdam, UnivalAdamConfig, parse_betas


def parameters(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=generator)) for shape in [(4, 3), (3,), (2, 2, 5)]]


def run_updates(optimizer, params, steps: int = 5):
    targets = [torch.full_like(p, 0.5) for p in params]
    for _ in range(steps):
        optimizer.zero_grad()
        loss = sum(((p - t) ** 2 * (index + 1)).sum() for index, (p, t) in enumerate(zip(params, targets)))
        loss.backward()
        optimizer.step()
    return [p.detach().clone() for p in params]


SETTINGS = dict(lr=[0.01], adam_betas="(0.9, 0.98)", adam_eps=1e-8, weight_decay=0.1)


@pytest.mark.parametrize("fused", [True, False])
def test_updates_match_fairseq_adam(fused):
    ours_params, theirs_params = parameters(), parameters()
    ours = UnivalAdam(UnivalAdamConfig(fused=fused, **SETTINGS), ours_params)
    theirs = FairseqAdam(FairseqAdamConfig(tpu=False, **SETTINGS), theirs_params)
    before = [p.detach().clone() for p in ours_params]

    ours_after, theirs_after = run_updates(ours, ours_params), run_updates(theirs, theirs_params)

    for start, mine, reference in zip(before, ours_after, theirs_after):
        assert not torch.allclose(mine, start)  # the parameters moved
        torch.testing.assert_close(mine, reference, atol=1e-5, rtol=1e-5)


def test_built_by_name_through_fairseq_registry_and_follows_lr_changes():
    params = parameters()
    cfg = OmegaConf.create({"_name": "unival_adam", **SETTINGS})
    optimizer = build_optimizer(cfg, params)
    assert isinstance(optimizer, UnivalAdam)
    assert optimizer.optimizer.defaults["fused"] is True
    assert optimizer.get_lr() == pytest.approx(0.01)
    optimizer.set_lr(0.002)
    assert all(group["lr"] == pytest.approx(0.002) for group in optimizer.param_groups)


def test_state_round_trips_through_a_checkpoint():
    params = parameters()
    optimizer = UnivalAdam(UnivalAdamConfig(**SETTINGS), params)
    run_updates(optimizer, params, steps=2)
    state = copy.deepcopy(optimizer.state_dict())  # as saved in a checkpoint, not the live tensors

    resumed_params = [p.detach().clone().requires_grad_() for p in params]
    resumed = UnivalAdam(UnivalAdamConfig(**SETTINGS), resumed_params)
    resumed.load_state_dict(state)
    continued = run_updates(optimizer, params, steps=2)
    after_resume = run_updates(resumed, resumed_params, steps=2)
    for a, b in zip(continued, after_resume):
        torch.testing.assert_close(a, b)


def test_one_flat_parameter_as_fairseq_fp16_hands_over():
    flat = torch.nn.Parameter(torch.cat([p.detach().flatten() for p in parameters()]))
    optimizer = UnivalAdam(UnivalAdamConfig(**SETTINGS), [flat])
    assert optimizer.supports_flat_params
    before = flat.detach().clone()
    flat.grad = torch.ones_like(flat)
    optimizer.step()
    # Adam's first step moves every coordinate by lr (the normalised gradient is 1), plus the weight decay.
    expected = before * (1 - 0.01 * 0.1) - 0.01
    torch.testing.assert_close(flat.detach(), expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("betas", ["(0.9)", "(0.9, 1.5)", "(a, b)", [0.9, 0.99, 0.5]])
def test_bad_betas_are_refused_with_the_option_named(betas):
    with pytest.raises(ValueError, match="--adam-betas"):
        parse_betas(betas)
