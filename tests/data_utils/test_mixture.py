"""Task balancing: rows per stream in a batch, what an epoch covers, reproducible orders, equal shards."""
import numpy as np
import pytest

from unival.data_utils.mixture import StreamMixture, parse_stream_weights, rows_per_stream


class Rows:
    """A stand-in stream of ``length`` rows whose items are their own row numbers."""

    def __init__(self, length):
        self.length = length
        self.epoch = None

    def __len__(self):
        return self.length

    def __getitem__(self, row):
        return row

    def set_epoch(self, epoch):
        self.epoch = epoch

    def num_tokens(self, row):
        return 10

    def size(self, row):
        return 10, 5

    def collater(self, rows):
        return {"rows": rows, "nsentences": len(rows), "ntokens": 3 * len(rows)} if rows else {}


@pytest.mark.parametrize("batch_size, weights, expected", [
    (8, [1, 1, 1], [3, 3, 2]),
    (8, [2, 1, 1], [4, 2, 2]),
    (10, [100, 1], [9, 1]),
    (3, [1, 1, 1], [1, 1, 1]),
    (7, [1], [7]),
])
def test_rows_per_stream_follow_the_weights_with_a_row_each_at_least(batch_size, weights, expected):
    assert rows_per_stream(batch_size, weights) == expected


def test_too_small_a_batch_and_bad_weights_are_refused():
    with pytest.raises(ValueError, match="cannot hold a row of each of 3 streams: raise --batch-size"):
        rows_per_stream(2, [1, 1, 1])
    with pytest.raises(ValueError, match="2 weights for 3 streams"):
        parse_stream_weights("1,2", ["image", "video", "audio"])
    with pytest.raises(ValueError, match="must be positive"):
        parse_stream_weights("1,0", ["image", "video"])
    with pytest.raises(ValueError, match="comma-separated numbers"):
        parse_stream_weights("1;2", ["image", "video"])
    assert parse_stream_weights(None, ["image", "video"]) == [1.0, 1.0]


def mixture(lengths=(10, 4), weights=(1, 1), **kwargs):
    names = ["image", "video", "audio"][:len(lengths)]
    return StreamMixture({name: Rows(length) for name, length in zip(names, lengths)}, list(weights), **kwargs)


def test_a_training_epoch_covers_the_largest_stream_once_and_cycles_the_smaller():
    data = mixture(lengths=(10, 4), weights=(3, 1), seed=3)
    batches = data.batch_by_size(data.ordered_indices(), max_sentences=4)
    # 3 image rows and 1 video row a batch: ceil(10 / 3) = 4 batches
    assert len(batches) == 4
    for batch in batches:
        streams = [data.locate(index)[0] for index in batch]
        assert streams == [0, 0, 0, 1]
    image_rows = [data.locate(index)[1] for batch in batches for index in batch[:3]]
    video_rows = [data.locate(index)[1] for batch in batches for index in batch[3:]]
    assert sorted(image_rows[:10]) == list(range(10))  # every image row, the first two again to fill the last batch
    assert sorted(video_rows) == list(range(4))


def test_orders_depend_on_seed_and_epoch_only():
    first, second = mixture(seed=3), mixture(seed=3)
    order = [batch.tolist() for batch in first.batch_by_size(first.ordered_indices(), max_sentences=4)]
    assert order == [batch.tolist() for batch in second.batch_by_size(second.ordered_indices(), max_sentences=4)]
    first.set_epoch(2)
    assert first.datasets["image"].epoch == 2
    assert order != [batch.tolist() for batch in first.batch_by_size(first.ordered_indices(), max_sentences=4)]


def test_training_shards_get_the_same_number_of_batches():
    data = mixture(lengths=(9, 2), weights=(2, 1))
    data.num_shards = 4
    batches = data.batch_by_size(data.ordered_indices(), max_sentences=3)
    assert len(batches) % 4 == 0 and all(len(batch) == 3 for batch in batches)


def test_evaluation_reads_each_stream_once_in_file_order_one_stream_a_batch():
    data = mixture(lengths=(5, 3), shuffle=False)
    batches = data.batch_by_size(data.ordered_indices(), max_sentences=2)
    assert [batch.tolist() for batch in batches] == [[0, 1], [2, 3], [4], [5, 6], [7]]


def test_batch_size_is_required_and_collation_keeps_streams_apart():
    data = mixture(lengths=(5, 3))
    with pytest.raises(ValueError, match="pass --batch-size"):
        data.batch_by_size(data.ordered_indices(), max_tokens=100)
    batch = data.collater([data[1], data[6], data[0]])
    assert batch["streams"]["image"]["rows"] == [1, 0] and batch["streams"]["video"]["rows"] == [1]
    assert batch["nsentences"] == 3 and batch["ntokens"] == 9
    assert data.collater([]) == {}
    assert data.num_tokens_vec(np.array([0, 6])).tolist() == [10, 10]
    with pytest.raises(IndexError, match="out of range"):
        data[8]
    assert data.size(6) == (10, 5)
