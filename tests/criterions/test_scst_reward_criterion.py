"""The criterion ``scst_reward_criterion``: baseline and loss arithmetic by hand, CIDEr-D and IoU rewards on
known outputs, the incremental sampler, and one SCST step of a tiny model for captions and for grounding."""
import argparse
import math
from types import SimpleNamespace

import pytest
import torch
from fairseq.criterions import CRITERION_REGISTRY, build_criterion
from fairseq.data import Dictionary
from fairseq.dataclass.utils import gen_parser_from_dataclass
from fairseq.logging import metrics

from unival.criterions.scst_reward_criterion import (
    CiderReward, IouReward, ScstRewardCriterion, ScstRewardCriterionConfig, leave_one_out_baseline, sample_sequences,
    scst_loss, sequence_log_probs)
from unival.data_utils.transforms import bins_to_box
from unival.data_utils.vocab import bin_token
from unival.metrics import cider_document_frequency
from unival.models.unival import UnivalConfig, UnivalModel, architecture_defaults
from unival.task_metrics import box_iou

BOS, PAD, EOS, UNK = 0, 1, 2, 3
NUM_WORDS, NUM_BINS = 12, 16
FIRST_BIN = 4 + NUM_WORDS  # <bin_0> follows the specials and the words w0..w11


def toy_dictionary() -> Dictionary:
    dictionary = Dictionary()
    for index in range(NUM_WORDS):
        dictionary.add_symbol(f"w{index}")
    for k in range(NUM_BINS):
        dictionary.add_symbol(bin_token(k))
    return dictionary


class FakeTask:
    """What the criterion uses of a unival task: the dictionary, ``cfg``, ``decode`` and CIDEr-D frequencies."""

    def __init__(self):
        self.target_dictionary = toy_dictionary()
        self.cfg = SimpleNamespace(train_subset="train", num_bins=NUM_BINS)
        self.document_frequency = {}

    def decode(self, tokens):
        dictionary = self.target_dictionary
        return dictionary.string(tokens, extra_symbols_to_ignore={dictionary.bos(), dictionary.pad()})


def words(*indices):
    return [4 + index for index in indices]  # id of w{index}


def tiny_model(dictionary):
    values = architecture_defaults("unival_tiny")
    values.update(encoder_layers=1, decoder_layers=1, encoder_embed_dim=32, decoder_embed_dim=32,
                  encoder_ffn_embed_dim=64, decoder_ffn_embed_dim=64, encoder_attention_heads=2,
                  decoder_attention_heads=2, image_encoder_stages=1, image_bucket_size=8, dropout=0.1,
                  encoder_drop_path_rate=0.0, decoder_drop_path_rate=0.0)
    torch.manual_seed(0)
    return UnivalModel.from_config(UnivalConfig(**values), dictionary).train()


@pytest.fixture(scope="module")
def task():
    return FakeTask()


@pytest.fixture(scope="module")
def model(task):
    return tiny_model(task.target_dictionary)


def toy_batch(target, references=None):
    """Two inputs: a prompt of 3 words and a 16 px image each (a 4 x 4 patch grid after ResNet stage 1)."""
    torch.manual_seed(1)
    target = torch.as_tensor(target)
    batch = {
        "uniq_ids": ["a", "b"],
        "net_input": {
            "src_tokens": torch.tensor([[BOS] + words(0, 1, 2) + [EOS]] * 2),
            "src_lengths": torch.tensor([5, 5]),
            "patch_images": torch.randn(2, 3, 16, 16),
            "patch_masks": torch.tensor([True, True]),
            "patch_types": torch.tensor([0, 0]),
            "prev_output_tokens": torch.cat([torch.full((2, 1), BOS), target[:, :-1]], dim=1),
        },
        "target": target,
        "ntokens": int(target.ne(PAD).sum()),
        "nsentences": 2,
    }
    if references is not None:
        batch["references"] = references
    return batch


CAPTION_REFERENCES = [["w1 w2 w3 w4", "w1 w2 w5 w4"], ["w6 w7 w8 w9"]]


def make_criterion(task, **options):
    values = dict(sentence_avg=False)
    values.update(options)
    return ScstRewardCriterion(task, **values).train()


# ---- registration and options -----------------------------------------------------------------------------------
def test_registered_and_built_from_options(task):
    assert CRITERION_REGISTRY["scst_reward_criterion"] is ScstRewardCriterion
    parser = argparse.ArgumentParser()
    gen_parser_from_dataclass(parser, ScstRewardCriterionConfig())
    defaults = parser.parse_args([])
    assert (defaults.reward, defaults.scst_samples, defaults.scst_max_len) == ("cider", 5, 16)
    args = parser.parse_args(["--reward", "iou", "--scst-samples", "3"])
    args.criterion, args.sentence_avg = "scst_reward_criterion", False
    criterion = build_criterion(args, task)
    assert isinstance(criterion.reward, IouReward) and criterion.num_samples == 3
    with pytest.raises(SystemExit):
        parser.parse_args(["--reward", "bleu"])


@pytest.mark.parametrize("options, message", [(dict(scst_samples=1), "scst-samples"),
                                              (dict(scst_max_len=0), "scst-max-len")])
def test_bad_options_are_refused(task, options, message):
    with pytest.raises(ValueError, match=message):
        make_criterion(task, **options)


# ---- arithmetic -------------------------------------------------------------------------------------------------
def test_leave_one_out_baseline_and_loss_by_hand():
    rewards = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.5, 0.5]])
    # Baseline of each sample: the mean of the other two of its row.
    assert leave_one_out_baseline(rewards).tolist() == [[2.5, 2.0, 1.5], [0.5, 0.5, 0.5]]
    lprobs = torch.tensor([[-1.0, -2.0, -3.0], [-4.0, -5.0, -6.0]], requires_grad=True)
    loss = scst_loss(lprobs, rewards)
    # Advantages (-1.5, 0, 1.5) and (0, 0, 0): loss = -(-1.5 * -1 + 0 * -2 + 1.5 * -3) = 3
    assert loss.item() == pytest.approx(3.0)
    loss.backward()
    assert lprobs.grad.tolist() == [[1.5, 0.0, -1.5], [0.0, 0.0, 0.0]]


def test_rewards_get_no_gradient():
    rewards = torch.tensor([[0.2, 0.6]], requires_grad=True)
    lprobs = torch.tensor([[-2.0, -5.0]], requires_grad=True)
    loss = scst_loss(lprobs, rewards)
    assert loss.item() == pytest.approx(-(-0.4 * -2.0 + 0.4 * -5.0))  # 1.2
    loss.backward()
    assert rewards.grad is None


# ---- rewards ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("box, other, expected", [
    ((0, 0, 4, 4), (2, 2, 6, 6), 4 / 28),  # overlap 2 x 2, union 16 + 16 - 4
    ((0, 0, 10, 10), (2, 2, 4, 4), 4 / 100),  # contained
    ((1, 2, 5, 7), (1, 2, 5, 7), 1.0),  # identical
    ((0, 0, 2, 2), (3, 3, 5, 5), 0.0),  # disjoint
    ((0, 0, 2, 2), (2, 0, 4, 2), 0.0),  # touching edges
    ((3, 0, 3, 5), (0, 0, 6, 6), 0.0),  # zero width
    ((5, 0, 1, 4), (0, 0, 6, 6), 0.0),  # inverted x: no area
    ((2, 2, 2, 2), (2, 2, 2, 2), 0.0),  # two points: empty union, no NaN
])
def test_iou_reward_by_hand(task, box, other, expected):
    sampled = torch.tensor([box]) + FIRST_BIN
    target = torch.tensor([list(other) + [EOS - FIRST_BIN]]) + FIRST_BIN
    reward = IouReward(task)({"target": target}, sampled, 1)
    assert reward.dtype == torch.float32 and reward.item() == pytest.approx(expected, abs=1e-7)


def test_iou_in_bins_equals_iou_in_pixels_of_a_non_square_image():
    bins, other = (10, 20, 600, 900), (300, 100, 800, 700)
    in_bins = box_iou(torch.tensor([bins], dtype=torch.float32), torch.tensor([other], dtype=torch.float32))
    pixels = [bins_to_box(b, (640, 480), 1000) for b in (bins, other)]
    in_pixels = box_iou(torch.tensor(pixels[:1], dtype=torch.float64), torch.tensor(pixels[1:], dtype=torch.float64))
    assert in_bins.item() == pytest.approx(in_pixels.item(), rel=1e-6)


def test_iou_reward_of_sampled_bins(task):
    reward = IouReward(task)
    target = torch.tensor([[FIRST_BIN + 0, FIRST_BIN + 0, FIRST_BIN + 4, FIRST_BIN + 4, EOS]])
    sequences = torch.tensor([[0, 0, 4, 4], [2, 2, 6, 6], [4, 0, 0, 4]]) + FIRST_BIN
    assert reward({"target": target}, sequences, 3).tolist() == pytest.approx([1.0, 4 / 28, 0.0])
    allowed = reward.allowed_tokens(len(task.target_dictionary), "cpu")
    assert allowed.nonzero().squeeze(1).tolist() == list(range(FIRST_BIN, FIRST_BIN + NUM_BINS))


def test_iou_reward_refuses_a_target_without_bins(task):
    sample = {"uniq_ids": ["r1", "r2"], "target": torch.tensor([[FIRST_BIN, FIRST_BIN, FIRST_BIN + 3, FIRST_BIN + 3],
                                                                 [FIRST_BIN, 5, FIRST_BIN, FIRST_BIN]])}
    with pytest.raises(ValueError, match="sample r2 .*4 <bin> tokens"):
        IouReward(task)(sample, torch.full((4, 4), FIRST_BIN), 2)


def test_cider_reward_refuses_a_task_without_reference_captions(tmp_path):
    """--reward cider with the grounding task failed at the first batch with "'float' object has no attribute
    'split'" (its references are boxes)."""
    from unival.tasks.refcoco import RefcocoConfig, RefcocoTask

    (tmp_path / "refcoco_train.tsv").write_text("1\t10\tthe left one\t0,0,10,10\tx.png\n")
    grounding = RefcocoTask.setup_task(RefcocoConfig(data=str(tmp_path), tsv_prefix="refcoco", train_subset="train",
                                                     valid_subset="valid"))
    with pytest.raises(ValueError, match="--reward cider scores captions, and the RefcocoTask task has no "
                                         r"reference captions \(grounding: --reward iou\)"):
        CiderReward(grounding, 16)


def test_cider_reward_of_known_captions(task):
    task.document_frequency["train"] = cider_document_frequency(CAPTION_REFERENCES)
    try:
        reward = CiderReward(task, max_length=8)
        # Per input, a copy of a reference, a caption sharing no word with the references, and an empty one.
        sequences = torch.tensor([words(1, 2, 3, 4) + [EOS, PAD], words(10, 11) + [EOS] + [PAD] * 3, [EOS] + [PAD] * 5,
                                  words(6, 7, 8, 9) + [EOS, PAD], words(0) + [EOS] + [PAD] * 4, [EOS] + [PAD] * 5])
        scores = reward({"references": CAPTION_REFERENCES}, sequences, 3)
    finally:
        task.document_frequency.clear()
    # "w6 w7 w8 w9" is the only reference of input b: every n-gram order matches exactly, CIDEr-D = 10.
    assert scores.tolist()[3:] == pytest.approx([10.0, 0.0, 0.0])
    # Input a has two references, all of whose n-grams have the same idf (log 2: they occur in 1 of 2 documents)
    # and the same length as the copy. Against "w1 w2 w5 w4" the copy shares 3 of 4 unigrams, 1 of 3 bigrams and
    # no longer n-gram; against its own reference everything: 10 * (1 + (3/4 + 1/3 + 0 + 0) / 4) / 2.
    assert scores[0].item() == pytest.approx(10 * (1 + (3 / 4 + 1 / 3) / 4) / 2, rel=1e-6)
    assert scores.tolist()[1:3] == [0.0, 0.0]


def test_cider_reward_falls_back_to_the_batch_references(task):
    reward = CiderReward(task, max_length=8)
    sequences = torch.tensor([words(6, 7, 8, 9) + [EOS]] * 2)
    scores = reward({"references": CAPTION_REFERENCES[1:]}, sequences, 2)
    # One document: every n-gram has idf log(1) - log(1) = 0, so nothing scores (why the training split's
    # frequencies are wanted).
    assert scores.tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="references"):
        reward({}, sequences, 2)


def test_cider_reward_moves_the_sampled_batch_to_the_host_once(task, monkeypatch):
    """On a GPU each row's own transfer would be a synchronisation: the batch is moved once, then decoded."""
    moved = []
    cpu = torch.Tensor.cpu
    monkeypatch.setattr(torch.Tensor, "cpu", lambda self, *args, **kwargs: moved.append(tuple(self.shape)) or
                        cpu(self, *args, **kwargs))
    sequences = torch.tensor([words(6, 7, 8, 9) + [EOS]] * 4)
    CiderReward(task, max_length=8)({"references": CAPTION_REFERENCES}, sequences, 2)
    assert [shape for shape in moved if len(shape) == 2] == [(4, 5)]


def test_caption_sampling_excludes_special_tokens(task):
    allowed = CiderReward(task, max_length=8).allowed_tokens(len(task.target_dictionary), "cpu")
    assert not allowed[[BOS, PAD, UNK]].any() and allowed[EOS] and allowed[4:].all()


# ---- sampling ---------------------------------------------------------------------------------------------------
def test_sampled_sequences_stop_at_eos_or_max_length(model):
    batch = toy_batch([[EOS], [EOS]])
    allowed = torch.zeros(len(model.decoder.dictionary), dtype=torch.bool)
    allowed[[EOS] + words(1, 2)] = True  # </s> about once in three steps: some rows stop, some reach the limit
    torch.manual_seed(3)
    with torch.no_grad():
        sequences = sample_sequences(model.eval(), batch["net_input"], 10, 6, BOS, EOS, PAD, allowed)
    model.train()
    assert sequences.shape == (20, 6)
    stopped = 0
    for row in sequences.tolist():
        if EOS in row:
            end = row.index(EOS)
            assert PAD not in row[:end] and all(token == PAD for token in row[end + 1:])
            stopped += 1
        else:
            assert PAD not in row
        assert set(row) <= {EOS, PAD, *words(1, 2)}
    assert 0 < stopped < 20


def test_sampled_bins_are_four_tokens(model):
    batch = toy_batch([[EOS], [EOS]])
    allowed = IouReward(FakeTask()).allowed_tokens(len(model.decoder.dictionary), "cpu")
    sequences = sample_sequences(model, batch["net_input"], 3, 4, BOS, EOS, PAD, allowed)
    assert sequences.shape == (6, 4)
    assert ((sequences >= FIRST_BIN) & (sequences < FIRST_BIN + NUM_BINS)).all()


def test_sequence_log_probs_sum_the_teacher_forced_token_log_probs(model):
    batch = toy_batch([[EOS], [EOS]])
    sequences = torch.tensor([words(1, 2) + [EOS], words(3) + [EOS, PAD], words(4, 4, 4), [EOS, PAD, PAD]])
    model.eval()
    with torch.no_grad():
        summed = sequence_log_probs(model, batch["net_input"], sequences, 2, BOS, PAD)
        net_input = dict(batch["net_input"], prev_output_tokens=torch.tensor([[BOS] + words(3) + [EOS]] * 2))
        for key in ("src_tokens", "src_lengths", "patch_images", "patch_masks", "patch_types"):
            net_input[key] = net_input[key][[0, 0]]
        lprobs = model.get_normalized_probs(model(**net_input), log_probs=True)
    model.train()
    # Row 1 (input a): w3 then </s>, padding left out.
    assert summed[1].item() == pytest.approx((lprobs[0, 0, words(3)[0]] + lprobs[0, 1, EOS]).item(), rel=1e-5)


# ---- one SCST step ----------------------------------------------------------------------------------------------
def gradient_norm(module):
    return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)


def test_one_caption_step(task, model):
    criterion = make_criterion(task, scst_samples=5, scst_max_len=8)
    sample = toy_batch([words(1, 2, 3, 4) + [EOS], words(6, 7, 8, 9) + [EOS]], CAPTION_REFERENCES)
    model.zero_grad()
    torch.manual_seed(4)
    loss, sample_size, logging = criterion(model, sample)
    loss.backward()
    assert model.training, "the model's training mode is restored after sampling"
    assert torch.isfinite(loss)
    assert logging["nsequences"] == 10 and logging["nsentences"] == 2
    assert sample_size == logging["ntokens"] and 10 <= sample_size <= 80
    assert logging["score_sum"] > 0, "some sample shares n-grams with its references (else no gradient)"
    assert gradient_norm(model.decoder.layers) > 0 and gradient_norm(model.encoder.layers) > 0


def test_one_grounding_step(task, model):
    criterion = make_criterion(task, reward="iou", scst_samples=4, sentence_avg=True)
    target = torch.tensor([[1, 1, 14, 14], [0, 2, 9, 15]]) + FIRST_BIN
    sample = toy_batch(torch.cat([target, torch.full((2, 1), EOS)], dim=1))
    model.zero_grad()
    torch.manual_seed(5)
    loss, sample_size, logging = criterion(model, sample)
    loss.backward()
    assert torch.isfinite(loss)
    assert sample_size == 8 and logging["ntokens"] == 32  # 4 bins per sampled box, no </s>
    assert 0 < logging["score_sum"] < 8
    assert gradient_norm(model.decoder.layers) > 0


def test_reduce_metrics():
    logging_outputs = [
        {"loss": torch.tensor(3.0), "score_sum": 4.0, "nsequences": 5, "ntokens": 20, "nsentences": 1,
         "sample_size": 20},
        {"loss": torch.tensor(-1.0), "score_sum": 2.0, "nsequences": 5, "ntokens": 30, "nsentences": 1,
         "sample_size": 30},
    ]
    assert ScstRewardCriterion.logging_outputs_can_be_summed()
    with metrics.aggregate() as aggregation:
        ScstRewardCriterion.reduce_metrics(logging_outputs)
        values = aggregation.get_smoothed_values()
    assert values["loss"] == pytest.approx(0.04)  # 2 over 50 sampled tokens
    assert values["score"] == pytest.approx(0.6)  # mean reward of the 10 samples
    assert not math.isnan(values["score"])
