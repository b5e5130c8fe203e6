"""Task balancing of pretraining: several datasets ("streams", e.g. image-text, video-text and audio-text rows) read
side by side, every training batch holding a fixed number of rows of each. The batch keeps the streams apart
(``sample["streams"][name]``), so that the criterion can normalise each stream's loss on its own and sum them."""
import bisect
import logging
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from fairseq.data import FairseqDataset

from unival.data_utils.dataset import pad_batches_to_multiple

logger = logging.getLogger(__name__)


def parse_stream_weights(text: Optional[str], names: Sequence[str]) -> List[float]:
    """``"2,1,1"`` -> one positive weight per stream (equal weights when ``text`` is empty)."""
    if not text:
        return [1.0] * len(names)
    try:
        weights = [float(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"--stream-weights {text!r}: expected comma-separated numbers") from None
    if len(weights) != len(names):
        raise ValueError(f"--stream-weights {text!r}: {len(weights)} weights for {len(names)} streams "
                         f"({', '.join(names)})")
    if any(not np.isfinite(weight) or weight <= 0 for weight in weights):
        raise ValueError(f"--stream-weights {text!r}: every weight must be positive")
    return weights


def rows_per_stream(batch_size: int, weights: Sequence[float]) -> List[int]:
    """The rows each stream puts into a batch of ``batch_size`` rows: proportional to ``weights`` (largest
    remainders rounded up), at least one each."""
    if batch_size < len(weights):
        raise ValueError(f"a batch of {batch_size} rows cannot hold a row of each of {len(weights)} streams: raise "
                         f"--batch-size")
    shares = np.asarray(weights, dtype=np.float64) / float(np.sum(weights)) * batch_size
    counts = np.maximum(np.floor(shares).astype(np.int64), 1)
    order = np.argsort(-(shares - np.floor(shares)), kind="stable")
    for stream in order:
        if counts.sum() >= batch_size:
            break
        counts[stream] += 1
    while counts.sum() > batch_size:  # the minimum of one row took rows from the largest shares
        counts[int(np.argmax(counts))] -= 1
    return [int(count) for count in counts]


class StreamMixture(FairseqDataset):
    """The streams' datasets one after the other in index space (stream ``s`` row ``r`` is ``offsets[s] + r``).

    In training (``shuffle``) an epoch is as many batches as the stream that takes longest to go through needs;
    each batch takes ``rows_per_stream`` rows of every stream from its own shuffled order, and a stream that runs
    out starts a new shuffled pass (smaller streams are seen more than once an epoch). Orders depend only on
    (seed, epoch, stream, pass). In evaluation every stream is read once in file order, a batch holding rows of
    one stream only.
    """

    def __init__(self, datasets: Mapping[str, FairseqDataset], weights: Optional[Sequence[float]] = None,
                 seed: int = 1, shuffle: bool = True, split: str = ""):
        if not datasets:
            raise ValueError("a stream mixture needs at least one stream")
        self.datasets: "OrderedDict[str, FairseqDataset]" = OrderedDict(datasets)
        self.names = list(self.datasets)
        self.weights = list(weights) if weights is not None else [1.0] * len(self.names)
        if len(self.weights) != len(self.names):
            raise ValueError(f"{len(self.weights)} weights for {len(self.names)} streams")
        self.seed = seed
        self.shuffle = shuffle
        self.split = split
        self.epoch = 1
        self.num_shards = 1
        self.offsets = np.cumsum([0] + [len(dataset) for dataset in self.datasets.values()]).tolist()
        empty = [name for name, dataset in self.datasets.items() if len(dataset) == 0]
        if empty:
            raise ValueError(f"stream {empty[0]!r} has no rows")

    # ---- rows -------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.offsets[-1]

    def locate(self, index: int) -> Tuple[int, int]:
        """(stream number, row in that stream) of a mixture index."""
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"mixture index {index} out of range ({len(self)} rows)")
        stream = bisect.bisect_right(self.offsets, index) - 1
        return stream, index - self.offsets[stream]

    def __getitem__(self, index: int) -> Tuple[int, Any]:
        stream, row = self.locate(index)
        return stream, self.datasets[self.names[stream]][row]

    def collater(self, items: List[Tuple[int, Any]]) -> Dict[str, Any]:
        """``{"streams": {name: that stream's batch}, "nsentences", "ntokens", "num_skipped", "split"}``; a
        stream's batch of bad rows only is its stand-in batch (see ``stand_in_batch``)."""
        grouped: Dict[int, List[Any]] = {}
        for stream, item in items:
            grouped.setdefault(stream, []).append(item)
        streams: Dict[str, Dict[str, Any]] = {}
        skipped = 0
        for stream in sorted(grouped):
            name = self.names[stream]
            batch = self.datasets[name].collater(grouped[stream])
            skipped += batch.get("num_skipped", 0)
            if batch:
                streams[name] = batch
        if not streams:
            return {}
        return {
            "streams": streams,
            "nsentences": sum(batch["nsentences"] for batch in streams.values()),
            "ntokens": sum(batch["ntokens"] for batch in streams.values()),
            "num_skipped": skipped,
            "split": self.split,
        }

    # ---- order and batches ------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        for dataset in self.datasets.values():
            dataset.set_epoch(epoch)

    @property
    def can_reuse_epoch_itr_across_epochs(self) -> bool:
        return False

    def ordered_indices(self) -> np.ndarray:
        return np.arange(len(self), dtype=np.int64)  # the batches' order is made in batch_by_size

    def num_tokens(self, index: int) -> int:
        stream, row = self.locate(index)
        return self.datasets[self.names[stream]].num_tokens(row)

    def num_tokens_vec(self, indices: np.ndarray) -> np.ndarray:
        return np.asarray([self.num_tokens(index) for index in indices], dtype=np.int64)

    def size(self, index: int):
        stream, row = self.locate(index)
        return self.datasets[self.names[stream]].size(row)

    def stream_indices(self, indices: Sequence[int]) -> List[np.ndarray]:
        """The mixture indices among ``indices`` of each stream, in stream order."""
        indices = np.asarray(indices, dtype=np.int64)
        return [indices[(indices >= start) & (indices < end)]
                for start, end in zip(self.offsets[:-1], self.offsets[1:])]

    def epoch_order(self, stream: int, indices: np.ndarray, length: int) -> np.ndarray:
        """``length`` indices of a stream: shuffled passes over ``indices``, each in its own order."""
        passes = [indices[np.random.RandomState([self.seed, self.epoch, stream, number]).permutation(len(indices))]
                  for number in range(-(-length // len(indices)))]
        return np.concatenate(passes)[:length]

    def batch_by_size(self, indices, max_tokens=None, max_sentences=None, required_batch_size_multiple=1):
        if max_sentences is None:
            raise ValueError("pretraining batches mix the streams in fixed proportions of --batch-size (rows per "
                             "batch): pass --batch-size")
        per_stream = self.stream_indices(indices)
        if not self.shuffle:
            batches = [rows[start:start + max_sentences] for rows in per_stream
                       for start in range(0, len(rows), max_sentences)]
            return pad_batches_to_multiple(batches, self.num_shards)
        missing = [name for name, rows in zip(self.names, per_stream) if len(rows) == 0]
        if missing:
            raise ValueError(f"stream {missing[0]!r} has no rows left to train on")
        counts = rows_per_stream(max_sentences, self.weights)
        steps = max(-(-len(rows) // count) for rows, count in zip(per_stream, counts))
        orders = [self.epoch_order(stream, rows, steps * count)
                  for stream, (rows, count) in enumerate(zip(per_stream, counts))]
        batches = [np.concatenate([order[step * count:(step + 1) * count] for order, count in zip(orders, counts)])
                   for step in range(steps)]
        logger.info("%s, epoch %d: %d batches, each with %s rows", self.split or "mixture", self.epoch, steps,
                    ", ".join(f"{count} {name}" for name, count in zip(self.names, counts)))
        return pad_batches_to_multiple(batches, self.num_shards)
