"""The caption task: token ids of prompt and target, references, vocabulary from the corpus, bad rows."""
import base64
import io
import multiprocessing
import time
from functools import partial

import pytest
import torch
from fairseq import metrics
from fairseq.data import Dictionary
from PIL import Image

from unival.data_utils.vocab import GPT2BPE
from unival.tasks.caption import CaptionConfig, CaptionTask

import task_files
from task_files import setup_task


def png_base64(colour=(200, 30, 30), size=40) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


write_split = partial(task_files.write_split, prefix="caption")
make_task = partial(setup_task, CaptionTask, CaptionConfig, prefix="caption", eval_cider=False)


GOOD = [["1", "10", "A red circle.", "", png_base64()], ["2", "11", "a green square", "", png_base64((0, 200, 0))]]


def test_prompt_and_target_ids_match_barts_dictionary(tmp_path, gpt2_bpe_dir):
    write_split(tmp_path, "train", GOOD)
    task = make_task(tmp_path, dict_file=str(gpt2_bpe_dir / "dict.txt"))
    task.load_dataset("train")
    batch = task.dataset("train").collater([task.dataset("train")[0]])
    # " what does the image describe?" in BART's ids, between <s> and </s>
    assert batch["net_input"]["src_tokens"][0].tolist() == [0, 99, 473, 5, 2274, 6190, 116, 2]
    bart = Dictionary.load(str(gpt2_bpe_dir / "dict.txt"))
    bpe = GPT2BPE()
    caption = bart.encode_line(bpe.encode(" a red circle"), add_if_not_exist=False, append_eos=False).tolist()
    assert batch["target"][0].tolist() == caption + [2]  # punctuation removed, lowercased
    assert batch["net_input"]["prev_output_tokens"][0].tolist() == [0] + caption
    assert batch["net_input"]["patch_images"].shape == (1, 3, 32, 32)
    assert batch["uniq_ids"] == ["1"]


def test_vocabulary_from_the_corpus_covers_every_caption_and_the_prompt(tmp_path):
    write_split(tmp_path, "train", GOOD)
    task = make_task(tmp_path)
    task.load_dataset("train")
    dataset = task.dataset("train")
    batch = dataset.collater([dataset[0], dataset[1]])
    unk = task.dictionary.unk()
    assert not (batch["target"] == unk).any() and not (batch["net_input"]["src_tokens"] == unk).any()
    assert task.decode(batch["target"][1]) == "a green square"
    # specials, BPE symbols of the corpus, <mask>, 8192 codes, 1000 bins
    assert task.dictionary.index("<bin_999>") == len(task.dictionary) - 1


def test_evaluation_rows_keep_every_reference(tmp_path):
    write_split(tmp_path, "train", GOOD)
    write_split(tmp_path, "valid", [["7", "70", "a red circle&&The red circle, on the left", "", png_base64()]])
    task = make_task(tmp_path)
    task.load_dataset("valid")
    sample = task.dataset("valid")[0]
    assert sample["references"] == ["a red circle", "the red circle on the left"]


BAD_ROWS = {
    "corrupt base64 image": (["3", "12", "a blue square", "", "iVBORw0KGgoAAAANSUhEUg" + "A" * 40], "image"),
    "missing image file": (["3", "12", "a blue square", "", "images/missing.png"], "missing.png"),
    "wrong column count": (["3", "12", "a blue square", png_base64()], "expected 5 columns, got 4"),
    "empty caption": (["3", "12", " ... ", "", png_base64()], "empty caption"),
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_a_bad_row_raises_naming_file_and_line(tmp_path, case):
    row, reason = BAD_ROWS[case]
    path = write_split(tmp_path, "train", GOOD + [row])
    with pytest.raises(ValueError) as error:
        # a malformed row already stops the vocabulary building; media and text fail when the row is read
        task = make_task(tmp_path)
        task.load_dataset("train")
        task.dataset("train")[2]
    assert f"{path}:3" in str(error.value)
    assert reason.lower() in str(error.value).lower()


def test_bad_rows_are_skipped_and_counted_on_request(tmp_path):
    rows = GOOD + [BAD_ROWS["corrupt base64 image"][0], BAD_ROWS["empty caption"][0],
                   BAD_ROWS["wrong column count"][0]]
    write_split(tmp_path, "train", rows)
    task = make_task(tmp_path, skip_bad_rows=True)
    task.load_dataset("train")
    dataset = task.dataset("train")
    batch = dataset.collater([dataset[i] for i in range(5)])
    assert batch["nsentences"] == 5 and batch["num_skipped"] == 3  # in training, good rows stand in for bad ones
    assert dataset.num_skipped == 3 and "lines 3, 4, 5" in dataset.skipped_summary()
    with metrics.aggregate() as aggregated:  # an epoch of three updates, one with no bad row: their sum
        for skipped in (batch["num_skipped"], 0, 2):
            task.reduce_metrics([{"num_skipped": skipped}], criterion=_NoMetrics())
    assert aggregated.get_smoothed_values()["skipped_rows"] == 5
    # validation counts them too (its log line showed none), also in a batch of bad rows only
    write_split(tmp_path, "valid", rows)
    task.load_dataset("valid")
    valid = task.dataset("valid")
    criterion = lambda model, sample: (torch.zeros(()), len(sample["id"]), {})  # noqa: E731
    _, size, logged = task.valid_step(valid.collater([valid[i] for i in range(5)]), torch.nn.Identity(), criterion)
    assert size == 2 and logged["num_skipped"] == 3
    real = valid.collater([valid[i] for i in (0, 1)])
    stand_in = valid.collater([valid[i] for i in (2, 3)])
    _, size, logged = task.valid_step(stand_in, torch.nn.Identity(), criterion)
    assert size == 0 and logged["num_skipped"] == 2
    counted = lambda model, sample: (torch.ones(()), 1, {"loss": torch.tensor(2.0), "ntokens": 7})  # noqa: E731
    _, _, real_logged = task.valid_step(real, torch.nn.Identity(), counted)
    _, size, logged = task.valid_step(stand_in, torch.nn.Identity(), counted)
    assert set(logged) == set(real_logged)  # the same keys as a real batch (ranks sum them in one buffer), zeroed
    assert size == 0 and float(logged["loss"]) == 0 and logged["ntokens"] == 0 and logged["num_skipped"] == 2


class _NoMetrics:
    @classmethod
    def reduce_metrics(cls, logging_outputs):
        pass

    @staticmethod
    def logging_outputs_can_be_summed():
        return True


def test_missing_split_file_is_named(tmp_path):
    write_split(tmp_path, "train", GOOD)
    task = make_task(tmp_path)
    with pytest.raises(FileNotFoundError, match="caption_test.tsv"):
        task.load_dataset("test")


def test_a_vocabulary_split_under_another_prefix_is_pointed_at(tmp_path):
    write_split(tmp_path, "train", GOOD)
    task = make_task(tmp_path, tsv_prefix="")  # a checkpoint read later may still give the vocabulary
    with pytest.raises(FileNotFoundError, match=r"without --dict-file the vocabulary is built from the training "
                                                r"split: split 'train': .*train.tsv not found \(data folder .*, "
                                                r"--tsv-prefix ''\); the folder has caption_train.tsv: pass "
                                                r"--tsv-prefix caption \(or pass the --dict-file"):
        task.load_dataset("train")


def test_generation_starts_from_bos(tmp_path):
    write_split(tmp_path, "train", GOOD)
    task = make_task(tmp_path)

    class Recorder:
        def generate(self, models, sample, **kwargs):
            self.kwargs = kwargs
            return []

    recorder = Recorder()
    task.inference_step(recorder, [], {})
    assert recorder.kwargs["bos_token"] == task.dictionary.bos() == 0


def test_scst_criterion_makes_the_task_count_training_n_grams_per_image(tmp_path):
    from unival.criterions.scst_reward_criterion import ScstRewardCriterionConfig

    write_split(tmp_path, "train", GOOD + [["3", "10", "A round red shape.", "", png_base64()]])
    task = make_task(tmp_path)
    task.build_criterion(ScstRewardCriterionConfig(_name="scst_reward_criterion"))
    task.load_dataset("train")
    frequency = task.document_frequency["train"]
    # rows 1 and 3 show image 10: "red" appears in one document for it, and "green" in image 11's
    assert frequency.num_documents == 2
    assert frequency.counts[("red",)] == 1 and frequency.counts[("green",)] == 1 and frequency.counts[("a",)] == 2
    # and each sample's references, which the reward compares against, are all of its image's captions
    dataset = task.dataset("train")
    assert dataset[0]["references"] == dataset[2]["references"] == ["a red circle", "a round red shape"]
    assert dataset[1]["references"] == ["a green square"]
    plain = make_task(tmp_path)
    plain.load_dataset("train")
    assert plain.dataset("train")[0]["references"] == ["a red circle"]  # cross-entropy: the row's own caption


def test_data_loader_workers_end_with_their_epoch(tmp_path):
    # fairseq-train reads batches through a buffer (--data-buffer-size, 10 by default), as here
    write_split(tmp_path, "train", GOOD * 4)
    task = make_task(tmp_path)
    task.load_dataset("train")
    for epoch in (1, 2):
        iterator = task.get_batch_iterator(task.dataset("train"), max_sentences=2, num_workers=1, epoch=epoch,
                                           data_buffer_size=4)
        batches = list(iterator.next_epoch_itr(shuffle=True))
        assert sum(len(batch["id"]) for batch in batches) == 8
        # no worker of this epoch is left idle into the next one (persistent workers would be); the buffer's
        # thread lets go of the loader just after handing over the last batch, hence the short wait
        deadline = time.monotonic() + 10
        while multiprocessing.active_children() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert multiprocessing.active_children() == []


def test_generation_warns_about_input_options_that_differ_from_training(tmp_path, caplog):
    from omegaconf import OmegaConf
    for split in ("train", "test"):
        write_split(tmp_path, split, GOOD)
    task = make_task(tmp_path, patch_image_size=32)
    trained = OmegaConf.create({"patch_image_size": 64, "max_src_length": task.cfg.max_src_length + 10,
                                "tsv_prefix": "other", "num_frames": 8})
    with caplog.at_level("WARNING"):
        task.load_dataset("test", task_cfg=trained)
    assert "trained with --patch-image-size 64 but this run uses --patch-image-size 32" in caplog.text
    assert "max-src-length" not in caplog.text and "tsv-prefix" not in caplog.text  # not input options
    assert task.warn_about_training_options(trained) == ["patch_image_size"]  # num_frames: not a caption option
    assert len(task.dataset("test")) == 2
    # a flag is added or dropped, not given a value (fairseq would refuse "--imagenet-default-mean-and-std False")
    caplog.clear()
    with caplog.at_level("WARNING"):
        task.warn_about_training_options(OmegaConf.create({"imagenet_default_mean_and_std": True}))
    assert "trained with --imagenet-default-mean-and-std but this run does not pass it: add it to give" in caplog.text
    flagged = make_task(tmp_path, patch_image_size=32, imagenet_default_mean_and_std=True)
    caplog.clear()
    with caplog.at_level("WARNING"):
        flagged.warn_about_training_options(OmegaConf.create({"imagenet_default_mean_and_std": False}))
    assert "trained without --imagenet-default-mean-and-std but this run passes it: drop it" in caplog.text


def test_validation_cider_of_each_subset_uses_its_own_document_frequencies(tmp_path, monkeypatch):
    """--valid-subset valid,test: each batch's CIDEr-D weighs n-grams by the references of its own subset (the
    test batches used the first subset's before)."""
    import torch

    from unival.criterions.adjust_label_smoothed_cross_entropy import AdjustLabelSmoothedCrossEntropyCriterion
    from unival.metrics import cider_d

    image = png_base64()
    write_split(tmp_path, "train", GOOD)
    write_split(tmp_path, "valid", [["1", "20", "a red circle&&a big red circle", "", image],
                                    ["2", "21", "a red square&&a small red square", "", image]])
    write_split(tmp_path, "test", [["3", "30", "a green square&&a big green square", "", image],
                                   ["4", "31", "a blue circle&&one blue circle", "", image],
                                   ["5", "32", "a green circle&&a green round circle", "", image]])
    task = make_task(tmp_path, eval_cider=True, valid_subset="valid,test")
    task.load_dataset("valid")
    batch = task_files.first_rows_batch(task, "test", 3)
    assert batch["split"] == "test"
    predictions = ["a green square", "a blue circle", "a red circle"]
    monkeypatch.setattr(task, "predict", lambda model, sample: predictions)
    model = task_files.build_tiny_model(task.dictionary)
    with torch.no_grad():
        _, _, logged = task.valid_step(batch, model, AdjustLabelSmoothedCrossEntropyCriterion(task, False))
    references = dict(enumerate(batch["references"]))
    own, other = (sum(cider_d(dict(enumerate(predictions)), references, document_frequency=task.document_frequency[
        split])[1]) for split in ("test", "valid"))
    assert logged["_cider_score_sum"] == pytest.approx(own) and logged["_cider_count"] == 3
    assert own != pytest.approx(other)
