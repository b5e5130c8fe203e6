"""The plugin's fixes to fairseq: the EMA of --store-ema averages floating-point state and copies integer state;
bias-free layers are not catalogued as shared parameters."""
import fairseq.trainer
import pytest
import torch
import torch.nn as nn
from fairseq.dataclass.configs import EMAConfig

from unival._compat import build_ema_copying_integer_state


def conv_bn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))


@pytest.mark.parametrize("fp32", [False, True])
def test_ema_averages_floats_and_copies_batchnorm_counters(fp32):
    model = conv_bn()
    ema = build_ema_copying_integer_state(model, EMAConfig(store_ema=True, ema_decay=0.75, ema_fp32=fp32), "cpu")
    before = {name: value.clone() for name, value in model.state_dict().items()}
    model.train()(torch.randn(2, 3, 8, 8))  # updates the BatchNorm running statistics and counter
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema.step(model)
    averaged, now = ema.get_model().state_dict(), model.state_dict()
    for name in ("0.weight", "1.running_mean", "1.running_var"):
        assert torch.allclose(averaged[name], 0.75 * before[name] + 0.25 * now[name]), name
    assert averaged["1.num_batches_tracked"].item() == now["1.num_batches_tracked"].item() == 1
    assert averaged["1.num_batches_tracked"].dtype == torch.int64


class CountedLoads(nn.Sequential):
    """A model whose own ``load_state_dict`` (fairseq's models check checkpoints there) counts its calls."""
    loads = 0

    def load_state_dict(self, state_dict, strict=True, **kwargs):
        CountedLoads.loads += 1
        return super().load_state_dict(state_dict, strict)


def test_an_ema_update_copies_the_average_without_the_checks_of_a_checkpoint(monkeypatch):
    """fairseq's EMA restored its model through the model's load_state_dict after every update: the checkpoint
    checks (vocabulary fingerprint, derived buffers, modality weights) ran at every update, and read GPU values."""
    torch.manual_seed(0)
    model = CountedLoads(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    monkeypatch.setattr(CountedLoads, "loads", 0)
    ema = build_ema_copying_integer_state(model, EMAConfig(store_ema=True, ema_decay=0.5), "cpu")
    before = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema.step(model)
    assert CountedLoads.loads == 0
    assert torch.allclose(ema.get_model()[0].weight, before + 0.5)
    ema.restore(model.state_dict())  # a checkpoint's EMA weights (trainer.load_checkpoint) go through the model's
    assert CountedLoads.loads == 1 and torch.equal(ema.get_model()[0].weight, model[0].weight)


def test_fairseq_trainer_builds_this_ema():
    """fairseq's own EMA multiplies every state entry by the decay and fails on the integer counters."""
    assert fairseq.trainer.build_ema is build_ema_copying_integer_state
    from fairseq.models.ema import EMA
    model = conv_bn()
    model.train()(torch.randn(2, 3, 8, 8))
    with pytest.raises(RuntimeError, match="Long"):
        EMA(model, EMAConfig(store_ema=True, ema_decay=0.75), "cpu").step(model)


def test_bias_free_layers_are_not_reported_as_shared_parameters():
    """fairseq-train logs each group of parameters that modules share; convolutions without bias were one group."""
    tied = nn.Linear(4, 4)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.Conv2d(4, 4, 3, bias=False), tied,
                          nn.Linear(4, 4, bias=False))
    model[3].weight = tied.weight
    assert fairseq.trainer._catalog_shared_params(model) == [["2.weight", "3.weight"]]
