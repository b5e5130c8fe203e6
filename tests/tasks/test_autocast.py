"""``--autocast-bf16``: training and validation forward passes in bfloat16 autocast on the model's device,
float32 parameters, gradients and optimizer; refused together with fairseq's reduced-precision optimizers."""
from pathlib import Path

import pytest
import torch
from fairseq.optim.amp_optimizer import AMPOptimizer

from unival.criterions.adjust_label_smoothed_cross_entropy import AdjustLabelSmoothedCrossEntropyCriterion
from unival.optim import UnivalAdam, UnivalAdamConfig
from unival.tasks.caption import CaptionConfig, CaptionTask

from task_files import build_tiny_model, first_rows_batch, setup_task


def caption_task(folder, **overrides):
    return setup_task(CaptionTask, CaptionConfig, folder, "caption", eval_cider=False, **overrides)


def training_run(task, steps, batch):
    """``steps`` training steps of a seeded tiny model on one batch; the losses, the dtypes the decoder's first
    feed-forward layer computed in, and the model."""
    model = build_tiny_model(task.dictionary)
    criterion = AdjustLabelSmoothedCrossEntropyCriterion(task, sentence_avg=False, label_smoothing=0.1)
    optimizer = UnivalAdam(UnivalAdamConfig(lr=[3e-3], adam_betas="(0.9, 0.999)", adam_eps=1e-8, weight_decay=0.01),
                           [p for p in model.parameters() if p.requires_grad])
    dtypes = []
    model.decoder.layers[0].fc1.register_forward_hook(lambda module, args, output: dtypes.append(output.dtype))
    losses = []
    for update in range(steps):
        optimizer.zero_grad()
        loss, sample_size, _ = task.train_step(batch, model, criterion, optimizer, update)
        assert all(p.grad is None or (p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all())
                   for p in model.parameters())
        optimizer.step()
        losses.append(loss.item() / sample_size)
    return losses, dtypes, model, criterion


def test_training_runs_its_forward_in_bfloat16_and_keeps_float32_weights(image_corpus):
    # allowed on any CPU: the numerics are the same where bfloat16 is emulated, and the tiny model stays fast
    task = caption_task(image_corpus, autocast_bf16=True, allow_emulated_bf16=True)
    batch = first_rows_batch(task, "train", 4)
    losses, dtypes, model, criterion = training_run(task, 12, batch)
    assert set(dtypes) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert losses[-1] < 0.85 * losses[0], losses  # it learns the batch

    plain_task = caption_task(image_corpus)
    plain_losses, plain_dtypes, _, _ = training_run(plain_task, 12, batch)
    assert set(plain_dtypes) == {torch.float32}
    # the same model and batch: the losses differ only by bfloat16 rounding, and learning goes as fast
    assert losses[0] == pytest.approx(plain_losses[0], rel=0.02) and losses[0] != plain_losses[0]
    assert losses[-1] == pytest.approx(plain_losses[-1], rel=0.05), (losses, plain_losses)

    dtypes.clear()
    valid_batch = first_rows_batch(task, "valid", 2)
    loss, sample_size, _ = task.valid_step(valid_batch, model, criterion)
    assert set(dtypes) == {torch.bfloat16} and loss.dtype == torch.float32 and torch.isfinite(loss)


def test_autocast_with_a_reduced_precision_optimizer_is_refused(image_corpus):
    task = caption_task(image_corpus, autocast_bf16=True)
    batch = first_rows_batch(task, "train", 2)
    model = build_tiny_model(task.dictionary)
    criterion = AdjustLabelSmoothedCrossEntropyCriterion(task, sentence_avg=False, label_smoothing=0.1)
    amp_optimizer = AMPOptimizer.__new__(AMPOptimizer)  # what --amp wraps the optimizer in (never stepped here)
    with pytest.raises(ValueError, match="cannot be combined with --fp16, --bf16 or --amp"):
        task.train_step(batch, model, criterion, amp_optimizer, 0)


@pytest.mark.parametrize("native", [True, None])
@pytest.mark.parametrize("allowed", [False, True])
def test_a_cpu_with_bfloat16_instructions_or_an_unknown_one_runs_silently(image_corpus, monkeypatch, caplog, native,
                                                                         allowed):
    from unival.tasks import base
    monkeypatch.setattr(base, "native_bfloat16_cpu", lambda: native)
    task = caption_task(image_corpus, autocast_bf16=True, allow_emulated_bf16=allowed)
    model = build_tiny_model(task.dictionary)
    with caplog.at_level("WARNING"):
        for _ in range(2):
            with task.forward_autocast(model):
                pass
    assert "bfloat16" not in caplog.text


def test_a_cpu_without_bfloat16_instructions_is_refused_unless_allowed(image_corpus, monkeypatch, caplog):
    from unival.tasks import base
    monkeypatch.setattr(base, "native_bfloat16_cpu", lambda: False)
    task = caption_task(image_corpus, autocast_bf16=True)
    model = build_tiny_model(task.dictionary)
    batch = first_rows_batch(task, "train", 2)
    criterion = AdjustLabelSmoothedCrossEntropyCriterion(task, sentence_avg=False, label_smoothing=0.1)
    for step in (lambda: task.train_step(batch, model, criterion, None, 0),
                 lambda: task.valid_step(batch, model, criterion)):
        with pytest.raises(ValueError, match=r"--autocast-bf16: this CPU has no bfloat16 instructions .* emulated"
                                             r".* pass --allow-emulated-bf16"):
            step()
    assert all(p.grad is None for p in model.parameters())  # refused before any computation

    allowed = caption_task(image_corpus, autocast_bf16=True, allow_emulated_bf16=True)
    with caplog.at_level("WARNING"):
        for _ in range(2):
            with allowed.forward_autocast(model):
                pass
    assert caplog.text.count("this CPU has no bfloat16 instructions, so bfloat16 is emulated") == 1


def test_this_machines_bfloat16_support_is_read():
    from unival.tasks.base import native_bfloat16_cpu
    cpuinfo = Path("/proc/cpuinfo")
    flags = cpuinfo.read_text() if cpuinfo.exists() else ""
    expected = (" avx512_bf16" in flags or " amx_tile" in flags) if " sse2" in flags else None
    assert native_bfloat16_cpu() == expected
