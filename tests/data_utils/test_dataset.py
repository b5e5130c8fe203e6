"""Tests of the base dataset: samples from a task hook, OFA's batch layout, bad rows raised or skipped and
counted, per-epoch shuffling and equal numbers of batches on every rank."""
import base64
import io

import numpy as np
import pytest
import torch
from fairseq.data import iterators
from PIL import Image

from unival.data_utils.dataset import BATCH_FIELDS, BatchField, UnivalDataset, pad_batches_to_multiple, stacked_media
from unival.data_utils.media import MediaError, load_image
from unival.data_utils.transforms import image_transform
from unival.data_utils.tsv import TSVFormatError, TSVReader
from unival.data_utils.vocab import GPT2BPE, build_unified_dictionary, normalize_caption

PROMPT = " what is it?"
WORDS = " a red circle blue square green triangle"
SIZE = 16


class TinyCaptionDataset(UnivalDataset):
    """Rows ``id, caption, image`` (``-`` for no image)."""

    transform = staticmethod(image_transform(SIZE, train=False))

    def build_sample(self, row, index):
        uniq_id, text, image = row
        caption = normalize_caption(text, 10)
        if not caption:
            raise ValueError(f"empty caption {text!r}")
        target, prev_output_tokens = self.target_and_prev_output_tokens(
            self.encode(" " + caption, length=self.max_tgt_length))
        sample = {"id": uniq_id, "source": self.encode(PROMPT, append_bos=True, append_eos=True),
                  "target": target, "prev_output_tokens": prev_output_tokens, "references": [caption]}
        if image != "-":
            sample["patch_image"] = self.transform(load_image(image, self.data_dir))
            sample["patch_mask"] = torch.tensor(True)
        return sample


@pytest.fixture(scope="module")
def bpe():
    return GPT2BPE()


@pytest.fixture(scope="module")
def dictionary(bpe):
    return build_unified_dictionary(corpus_texts=[PROMPT, WORDS], bpe=bpe, code_dict_size=4, num_bins=10)


def image_field(colour) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
    return base64.urlsafe_b64encode(buffer.getvalue()).decode()


def write_tsv(path, rows):
    path.write_text("".join("\t".join(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def make_dataset(tmp_path, rows, dictionary, bpe, **kwargs):
    path = write_tsv(tmp_path / "train.tsv", rows)
    return TinyCaptionDataset("train", TSVReader(path, cache_index=False), dictionary, bpe, str(tmp_path), **kwargs)


GOOD_ROWS = [
    ["r0", "A red circle, blue.", image_field((255, 0, 0))],
    ["r1", "a blue square", image_field((0, 0, 255))],
    ["r2", "green", "-"],
]


def test_collater_builds_ofa_batch(tmp_path, dictionary, bpe):
    dataset = make_dataset(tmp_path, GOOD_ROWS, dictionary, bpe)
    samples = [dataset[i] for i in range(3)]
    batch = dataset.collater(samples)
    pad, bos, eos = dictionary.pad(), dictionary.bos(), dictionary.eos()
    net_input = batch["net_input"]

    assert batch["id"].tolist() == [0, 1, 2] and batch["id"].dtype == torch.long
    assert batch["uniq_ids"] == ["r0", "r1", "r2"]
    assert batch["nsentences"] == 3 and batch["num_skipped"] == 0
    assert batch["references"] == [["a red circle blue"], ["a blue square"], ["green"]]

    source = samples[0]["source"]
    assert source[0] == bos and source[-1] == eos
    assert net_input["src_tokens"].tolist() == [source.tolist()] * 3
    assert net_input["src_lengths"].tolist() == [len(source)] * 3

    lengths = [len(sample["target"]) for sample in samples]
    assert lengths == [5, 4, 2]  # one BPE token a word, + </s>
    assert batch["ntokens"] == sum(lengths)
    for i, sample in enumerate(samples):
        assert batch["target"][i, :lengths[i]].tolist() == sample["target"].tolist()
        assert batch["target"][i, lengths[i]:].tolist() == [pad] * (5 - lengths[i])
        assert net_input["prev_output_tokens"][i, :lengths[i]].tolist() == sample["prev_output_tokens"].tolist()
        assert net_input["prev_output_tokens"][i, lengths[i]:].tolist() == [pad] * (5 - lengths[i])
    assert net_input["prev_output_tokens"][:, 0].tolist() == [bos] * 3
    assert batch["target"][0, 4] == eos and batch["target"][1, 3] == eos

    images = net_input["patch_images"]
    assert images.shape == (3, 3, SIZE, SIZE)
    ones = torch.ones(SIZE, SIZE)
    assert torch.allclose(images[0, 0], ones) and torch.allclose(images[0, 2], -ones)
    assert torch.allclose(images[1, 2], torch.ones(SIZE, SIZE))
    assert torch.equal(images[2], torch.zeros(3, SIZE, SIZE))
    assert net_input["patch_masks"].tolist() == [True, True, False]
    assert net_input["patch_types"].tolist() == [0, 0, 0]
    assert "conf" not in batch


def test_collater_confidence_and_text_only(dictionary):
    dataset = TinyCaptionDataset.__new__(TinyCaptionDataset)
    dataset.pad, dataset.eos, dataset.split = dictionary.pad(), dictionary.eos(), "valid"
    samples = [{"id": "q1", "index": 4, "source": torch.tensor([0, 9, 2]), "target": torch.tensor([7, 2]),
                "prev_output_tokens": torch.tensor([0, 7]), "conf": torch.tensor([0.3])},
               {"id": "q2", "index": 8, "source": torch.tensor([0, 2]), "target": torch.tensor([2]),
                "prev_output_tokens": torch.tensor([0])}]
    batch = dataset.collater(samples)
    assert torch.allclose(batch["conf"], torch.tensor([0.3, 1.0]))
    assert batch["net_input"]["src_tokens"].tolist() == [[0, 9, 2], [0, 2, 1]]
    assert batch["net_input"]["src_lengths"].tolist() == [3, 2]
    assert "patch_images" not in batch["net_input"]
    assert batch["net_input"]["patch_masks"].tolist() == [False, False]
    assert batch["ntokens"] == 3


def test_collater_extends_with_new_media(dictionary):
    class VideoDataset(TinyCaptionDataset):
        batch_fields = {**BATCH_FIELDS, "patch_videos": BatchField(("patch_video",), stacked_media("patch_video"))}
        media_keys = ("patch_image", "patch_video")

    dataset = VideoDataset.__new__(VideoDataset)
    dataset.pad, dataset.eos, dataset.split = dictionary.pad(), dictionary.eos(), "valid"
    video = torch.ones(2, 3, 4, 4)
    samples = [{"index": 0, "source": torch.tensor([0, 2]), "target": torch.tensor([2]),
                "prev_output_tokens": torch.tensor([0]), "patch_video": video, "patch_type": 1},
               {"index": 1, "source": torch.tensor([0, 2]), "target": torch.tensor([2]),
                "prev_output_tokens": torch.tensor([0]), "patch_image": torch.ones(3, 4, 4)}]
    net_input = dataset.collater(samples)["net_input"]
    assert torch.equal(net_input["patch_videos"], torch.stack([video, torch.zeros_like(video)]))
    assert torch.equal(net_input["patch_images"], torch.stack([torch.zeros(3, 4, 4), torch.ones(3, 4, 4)]))
    assert net_input["patch_masks"].tolist() == [True, True]
    assert net_input["patch_types"].tolist() == [1, 0]


BAD_ROWS = GOOD_ROWS[:2] + [
    ["r3", "a red square", "images/missing.png"],
    ["r4", "only two columns"],
    ["r5", "?!", image_field((0, 255, 0))],
    ["r6", "square", "-"],
]


def test_bad_rows_raise_with_file_and_line(tmp_path, dictionary, bpe):
    dataset = make_dataset(tmp_path, BAD_ROWS, dictionary, bpe)
    path = dataset.reader.path
    with pytest.raises(MediaError) as info:
        dataset[2]
    assert str(info.value).startswith(f"{path}:3: file not found: {tmp_path / 'images' / 'missing.png'}")
    with pytest.raises(TSVFormatError) as info:
        dataset[3]
    assert str(info.value).startswith(f"{path}:4: expected 3 columns, got 2")
    assert str(info.value).count(path) == 1
    with pytest.raises(ValueError, match=f"^{path}:5: empty caption '\\?!'$"):
        dataset[4]
    assert dataset.num_skipped == 0


def test_bad_rows_skipped_and_counted(tmp_path, dictionary, bpe):
    dataset = make_dataset(tmp_path, BAD_ROWS, dictionary, bpe, skip_bad_rows=True, shuffle=False)  # evaluation
    path = dataset.reader.path
    samples = [dataset[i] for i in range(len(dataset))]
    assert [sample is None for sample in samples] == [False, False, True, True, True, False]
    assert dataset.num_skipped == 3
    assert [line for line, _ in dataset.skipped_rows] == [3, 4, 5]
    assert dataset.skipped_rows[1][1].startswith(f"{path}:4: expected 3 columns, got 2")
    assert dataset.skipped_summary() == f"{path}: skipped 3 bad rows (lines 3, 4, 5)"

    batch = dataset.collater(samples)
    assert batch["nsentences"] == 3 and batch["num_skipped"] == 3
    assert batch["id"].tolist() == [0, 1, 5]
    # bad rows only: a good row of the split stands in (validation runs it and zeroes what it logs but the count),
    # its input out of fairseq-generate's sight; no rows at all: {} (fairseq's empty shard)
    stand_in = dataset.collater([samples[2], samples[3]])
    assert "net_input" not in stand_in and stand_in["stand_in_input"]["src_tokens"].shape[0] == 1
    assert stand_in["id"].tolist()[0] in (0, 1, 5) and stand_in["num_skipped"] == 2  # a good row
    assert dataset.collater([]) == {}


def test_bad_training_rows_are_replaced_by_good_ones_and_counted_once(tmp_path, dictionary, bpe, caplog):
    """A training batch never shrinks to nothing: fairseq would take a dummy step for it (an update with no
    gradient, its count lost), or stop with "Invalid dummy batch" when it is the epoch's first batch."""
    dataset = make_dataset(tmp_path, BAD_ROWS, dictionary, bpe, skip_bad_rows=True, seed=3)
    samples = [dataset[i] for i in range(len(dataset))]
    assert all(sample is not None for sample in samples)
    assert [sample["index"] for sample in samples][:2] == [0, 1] and samples[5]["index"] == 5
    assert all(samples[i]["index"] in (0, 1, 5) and samples[i]["replaced"] for i in (2, 3, 4))
    assert not any(samples[i].get("replaced") for i in (0, 1, 5))
    assert dataset.num_skipped == 3 and dataset.bad_rows == {2, 3, 4}
    assert caplog.text.count("skipped bad row") == 3  # each logged once, though replacements met them again
    batch = dataset.collater(samples)
    assert batch["nsentences"] == 6 and batch["num_skipped"] == 3 and "replaced" not in batch
    # the replacement depends on (seed, epoch, row) only
    again = make_dataset(tmp_path, BAD_ROWS, dictionary, bpe, skip_bad_rows=True, seed=3)
    assert [again[i]["index"] for i in (2, 3, 4)] == [samples[i]["index"] for i in (2, 3, 4)]


def test_a_training_split_without_a_good_row_stops(tmp_path, dictionary, bpe):
    rows = [["r", "?", "-"], ["s", "two columns"]]
    dataset = make_dataset(tmp_path, rows, dictionary, bpe, skip_bad_rows=True)
    with pytest.raises(ValueError, match=r"train.tsv: no row of the train split can be read \(--skip-bad-rows "
                                         r"skipped all 2; the first: .*train.tsv:1: empty caption"):
        dataset[0]


def test_skipped_rows_listed_up_to_twenty(tmp_path, dictionary, bpe):
    rows = [["r", "?", "-"]] * 25 + [["ok", "red", "-"]]
    dataset = make_dataset(tmp_path, rows, dictionary, bpe, skip_bad_rows=True, shuffle=False)
    assert sum(dataset[i] is None for i in range(len(dataset))) == 25
    assert dataset.num_skipped == 25 and len(dataset.skipped_rows) == 20
    assert dataset.skipped_summary().endswith("skipped 25 bad rows (lines " + ", ".join(map(str, range(1, 21)))
                                              + ", ...)")


def test_shuffle_depends_on_seed_and_epoch(tmp_path, dictionary, bpe):
    rows = [[f"r{i}", "red", "-"] for i in range(50)]
    dataset = make_dataset(tmp_path, rows, dictionary, bpe, seed=7)
    assert dataset.can_reuse_epoch_itr_across_epochs is False
    dataset.set_epoch(1)
    first = dataset.ordered_indices()
    assert np.array_equal(first, np.random.RandomState([7, 1]).permutation(50))
    assert np.array_equal(dataset.ordered_indices(), first)
    dataset.set_epoch(2)
    second = dataset.ordered_indices()
    assert sorted(second.tolist()) == list(range(50)) and not np.array_equal(second, first)
    other_seed = make_dataset(tmp_path, rows, dictionary, bpe, seed=8)
    other_seed.set_epoch(2)
    assert not np.array_equal(other_seed.ordered_indices(), second)
    in_order = make_dataset(tmp_path, rows, dictionary, bpe, shuffle=False)
    in_order.set_epoch(3)
    assert in_order.ordered_indices().tolist() == list(range(50))


def test_sizes_are_bounds(tmp_path, dictionary, bpe):
    dataset = make_dataset(tmp_path, GOOD_ROWS, dictionary, bpe, max_src_length=40, max_tgt_length=12)
    assert dataset.size(0) == (40, 12) and dataset.num_tokens(2) == 40
    assert dataset.num_tokens_vec(np.arange(3)).tolist() == [40, 40, 40]


def test_pad_batches_to_multiple():
    batches = [np.array([i, i + 10]) for i in range(5)]
    padded = pad_batches_to_multiple(batches, 4)
    assert [b.tolist() for b in padded] == [b.tolist() for b in batches + batches[:3]]
    assert [b.tolist() for b in pad_batches_to_multiple(batches, 5)] == [b.tolist() for b in batches]
    assert [b.tolist() for b in pad_batches_to_multiple(batches, 1)] == [b.tolist() for b in batches]
    one = [np.array([3])]
    assert [b.tolist() for b in pad_batches_to_multiple(one, 3)] == [[3], [3], [3]]
    assert [b.tolist() for b in pad_batches_to_multiple([np.array([1]), np.array([], dtype=np.int64)], 2)] == [
        [1], [1]]
    assert pad_batches_to_multiple([], 4) == []


@pytest.mark.filterwarnings("ignore:'pin_memory' argument")
def test_every_rank_gets_the_same_nonempty_batches(tmp_path, dictionary, bpe):
    rows = [[f"r{i}", "red circle", "-"] for i in range(10)]
    dataset = make_dataset(tmp_path, rows, dictionary, bpe)
    dataset.num_shards = 3
    dataset.set_epoch(1)
    batches = dataset.batch_by_size(dataset.ordered_indices(), max_sentences=3)
    assert [len(b) for b in batches] == [3, 3, 3, 1, 3, 3]
    per_rank = []
    for shard_id in range(3):
        epoch_iter = iterators.EpochBatchIterator(dataset, dataset.collater, batches, seed=1, num_shards=3,
                                                  shard_id=shard_id, epoch=1)
        per_rank.append([batch["nsentences"] for batch in epoch_iter.next_epoch_itr(shuffle=True)])
    assert [len(sizes) for sizes in per_rank] == [2, 2, 2]
    assert all(size > 0 for sizes in per_rank for size in sizes)


class Sized(UnivalDataset):
    def __init__(self, length: int, num_shards: int = 1):
        self.length, self.num_shards = length, num_shards

    def __len__(self):
        return self.length

    def num_tokens_vec(self, indices):
        return np.full(len(indices), 10, dtype=np.int64)

    def num_tokens(self, index):
        return 10


def test_batch_size_below_the_required_multiple_still_gives_batches():
    batches = Sized(5).batch_by_size(np.arange(5), max_sentences=4, required_batch_size_multiple=8)
    assert [len(batch) for batch in batches] == [4, 1]


@pytest.mark.parametrize("length, sizes", [(13, [8, 5]), (5, [5]), (16, [8, 8]), (21, [8, 8, 5])])
def test_no_sample_is_dropped_by_the_required_batch_size_multiple(length, sizes):
    """fairseq's batch_by_size drops a last batch that is not a multiple of --required-batch-size-multiple (8 by
    default): an evaluation split of 13 samples would have 5 unscored, one of 5 none scored."""
    indices = np.random.RandomState(0).permutation(length)
    batches = Sized(length).batch_by_size(indices, max_sentences=8, required_batch_size_multiple=8)
    assert [len(batch) for batch in batches] == sizes
    assert np.concatenate(batches).tolist() == indices.tolist()  # each sample once, in the given order
    # training on 2 ranks: the kept remainder counts towards each rank's equal share of batches
    padded = Sized(length, num_shards=2).batch_by_size(indices, max_sentences=8, required_batch_size_multiple=8)
    assert len(padded) % 2 == 0 and set(np.concatenate(padded).tolist()) == set(range(length))
