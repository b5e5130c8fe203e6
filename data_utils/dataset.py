"""The dataset every unival task builds on: rows of a TSV file turned into samples by a task hook, bad rows
raised with file:line or skipped and counted, OFA's batch layout, per-epoch shuffling and equal shards."""
import itertools
import logging
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np
import torch
from fairseq.data import Dictionary, FairseqDataset
from fairseq.data.data_utils import collate_tokens

from unival.data_utils.tsv import TSVReader
from unival.data_utils.vocab import GPT2BPE, encode_text

logger = logging.getLogger(__name__)

MAX_LOGGED_SKIPS = 20
REPLACEMENT_DRAWS = 32  # random rows tried in place of a bad training row before every row is tried in order


STAND_IN_INPUT = "stand_in_input"  # where a stand-in batch keeps its net_input (see stand_in_batch)


def stand_in_batch(batch: Dict[str, Any], num_skipped: int) -> Dict[str, Any]:
    """An evaluation batch whose rows were all bad, as ``batch`` (one good row of the split) standing in for it.
    Validation runs the stand-in and zeroes all it logs but ``num_skipped`` (``UnivalTask.valid_step``): every rank
    of a distributed run must log the same keys at each step, which a batch of counts only would not, and fairseq's
    own dummy batch would lose the count (or stop the run when the split's first batch is the bad one). Its input
    is kept under ``STAND_IN_INPUT`` rather than ``net_input``, so fairseq-generate and ``generate_split`` pass over
    it."""
    batch = dict(batch)
    batch[STAND_IN_INPUT] = batch.pop("net_input")
    batch["num_skipped"] = num_skipped
    return batch


def replaced_rows(samples: Sequence[Optional[Dict[str, Any]]]) -> int:
    """How many of ``samples`` stand in for a bad training row (see ``UnivalDataset.replacement``)."""
    return sum(1 for sample in samples if sample is not None and sample.get("replaced"))


@dataclass(frozen=True)
class BatchField:
    """One entry of a batch: built from the list of samples, placed in ``net_input`` or at the top level.

    ``keys`` are the sample keys it consumes (keys no field consumes are passed through as lists).
    ``collate`` returns None to leave the entry out of the batch.
    """

    keys: Tuple[str, ...]
    collate: Callable[["UnivalDataset", List[dict]], Any]
    net_input: bool = True


def padded_tokens(key: str) -> Callable:
    def collate(dataset: "UnivalDataset", samples: List[dict]) -> Optional[torch.Tensor]:
        values = [sample.get(key) for sample in samples]
        if all(value is None for value in values):
            return None
        if any(value is None for value in values):
            raise ValueError(f"{key!r} is missing from some samples of the batch")
        return collate_tokens(values, dataset.pad, dataset.eos)
    return collate


def present_media(key: str, samples: List[dict]) -> List[torch.Tensor]:
    """The ``key`` tensors of the samples that have one, in batch order; ValueError when their shapes differ."""
    present = [sample[key] for sample in samples if sample.get(key) is not None]
    shapes = {tuple(value.shape) for value in present}
    if len(shapes) > 1:
        raise ValueError(f"{key!r} tensors of different shapes in one batch: {sorted(shapes)}")
    return present


def stacked_media(key: str) -> Callable:
    """(B, ...) stack of the ``key`` tensors, zeros for samples without one; None when no sample has one."""
    def collate(dataset: "UnivalDataset", samples: List[dict]) -> Optional[torch.Tensor]:
        present = present_media(key, samples)
        if not present:
            return None
        zeros = torch.zeros_like(present[0])
        return torch.stack([zeros if sample.get(key) is None else sample[key] for sample in samples])
    return collate


def compact_media(key: str) -> Callable:
    """(M, ...) stack of the ``key`` tensors of the M samples that have one, in batch order (no placeholder rows
    for the others: the model takes their rows by ``patch_types``); None when no sample has one."""
    def collate(dataset: "UnivalDataset", samples: List[dict]) -> Optional[torch.Tensor]:
        present = present_media(key, samples)
        return torch.stack(present) if present else None
    return collate


def source_lengths(dataset: "UnivalDataset", samples: List[dict]) -> torch.Tensor:
    return torch.tensor([int(sample["source"].ne(dataset.pad).sum()) for sample in samples], dtype=torch.long)


def patch_masks(dataset: "UnivalDataset", samples: List[dict]) -> torch.Tensor:
    """Whether each sample's media is real; a sample without ``patch_mask`` is real when it has media."""
    def mask(sample: dict) -> bool:
        if sample.get("patch_mask") is not None:
            return bool(sample["patch_mask"])
        return any(sample.get(key) is not None for key in dataset.media_keys)
    return torch.tensor([mask(sample) for sample in samples], dtype=torch.bool)


def patch_types(dataset: "UnivalDataset", samples: List[dict]) -> torch.Tensor:
    """Modality of each sample's media (image 0; video and audio tasks set ``patch_type``)."""
    return torch.tensor([int(sample.get("patch_type", 0)) for sample in samples], dtype=torch.long)


def confidences(dataset: "UnivalDataset", samples: List[dict]) -> Optional[torch.Tensor]:
    """(B,) loss weights (VQA answer confidence); 1 for samples without ``conf``, None when none has one."""
    if all(sample.get("conf") is None for sample in samples):
        return None
    return torch.tensor([1.0 if sample.get("conf") is None else float(sample["conf"]) for sample in samples])


def constraint_masks(dataset: "UnivalDataset", samples: List[dict]) -> Optional[torch.Tensor]:
    """(B, T, V) tokens allowed at each target position (an answer trie), padded with "nothing allowed"."""
    masks = [sample.get("constraint_mask") for sample in samples]
    if all(mask is None for mask in masks):
        return None
    if any(mask is None for mask in masks):
        raise ValueError("'constraint_mask' is missing from some samples of the batch")
    batch = masks[0].new_zeros(len(masks), max(mask.size(0) for mask in masks), masks[0].size(1))
    for row, mask in enumerate(masks):
        batch[row, :mask.size(0)] = mask
    return batch


BATCH_FIELDS: Dict[str, BatchField] = {
    "src_tokens": BatchField(("source",), padded_tokens("source")),
    "src_lengths": BatchField(("source",), source_lengths),
    "patch_images": BatchField(("patch_image",), stacked_media("patch_image")),
    "patch_videos": BatchField(("patch_video",), stacked_media("patch_video")),
    "patch_audios": BatchField(("patch_audio",), stacked_media("patch_audio")),
    "patch_masks": BatchField(("patch_mask",), patch_masks),
    "patch_types": BatchField(("patch_type",), patch_types),
    "prev_output_tokens": BatchField(("prev_output_tokens",), padded_tokens("prev_output_tokens")),
    "target": BatchField(("target",), padded_tokens("target"), net_input=False),
    "conf": BatchField(("conf",), confidences, net_input=False),
    "constraint_masks": BatchField(("constraint_mask",), constraint_masks, net_input=False),
}


def pad_batches_to_multiple(batches: Sequence[np.ndarray], num_shards: int) -> List[np.ndarray]:
    """``batches`` with the first ones repeated until their number is a multiple of ``num_shards``, so that
    every rank gets the same number of non-empty batches (the original crashed on an empty last shard)."""
    batches = [batch for batch in batches if len(batch) > 0]
    if num_shards <= 1 or not batches:
        return batches
    missing = -len(batches) % num_shards
    return batches + [batches[i % len(batches)] for i in range(missing)]


def error_with_message(err: ValueError, message: str) -> ValueError:
    """An exception of the type of ``err`` (ValueError when that type takes other arguments) with ``message``."""
    try:
        return type(err)(message)
    except TypeError:
        return ValueError(message)


class UnivalDataset(FairseqDataset):
    """Rows of ``reader`` -> samples (the subclass's :meth:`build_sample`) -> OFA's batches.

    A sample is a dict with ``id`` (the row's own id), ``source`` (LongTensor), ``target`` (ends with
    ``</s>``), ``prev_output_tokens`` (starts with ``<s>``) and optionally ``patch_image`` (3, S, S),
    ``patch_mask``, ``patch_type``, ``conf``; keys that no entry of :attr:`batch_fields` consumes are passed
    through as lists (``references`` of captions). Subclasses add media with :attr:`batch_fields` and
    :attr:`media_keys`, e.g. ``"patch_videos": BatchField(("patch_video",), stacked_media("patch_video"))``.
    ``__getitem__`` adds ``index`` (the dataset index), which becomes the batch's ``id``.

    ``build_sample`` raises ValueError for a bad row (MediaError, TSVFormatError, empty text): the error is
    re-raised with the TSV path and line, or, with ``skip_bad_rows``, logged, counted and the row dropped.
    """

    batch_fields: Dict[str, BatchField] = BATCH_FIELDS
    media_keys: Tuple[str, ...] = ("patch_image", "patch_video", "patch_audio")

    def __init__(self, split: str, reader: TSVReader, dictionary: Dictionary, bpe: GPT2BPE, data_dir: Optional[str],
                 seed: int = 1, skip_bad_rows: bool = False, max_src_length: int = 80, max_tgt_length: int = 30,
                 shuffle: bool = True):
        self.split = split
        self.reader = reader
        self.dictionary = dictionary
        self.bpe = bpe
        self.data_dir = data_dir
        self.seed = seed
        self.skip_bad_rows = skip_bad_rows
        self.max_src_length = max_src_length
        self.max_tgt_length = max_tgt_length
        self.shuffle = shuffle
        self.bos, self.eos, self.pad = dictionary.bos(), dictionary.eos(), dictionary.pad()
        self.epoch = 1
        self.num_shards = 1  # the task sets the number of ranks; batch_by_size then gives each the same count
        self.num_skipped = 0  # bad rows met at their turn, by this process
        self.skipped_rows: List[Tuple[int, str]] = []  # (line, reason) of the first bad rows this process met
        self.bad_rows: Set[int] = set()  # indices of the bad rows this process met

    # ---- samples ----------------------------------------------------------------------------------------
    def build_sample(self, row: List[str], index: int) -> Dict[str, Any]:
        """The sample of one TSV row (its selected columns); raise ValueError for a bad row."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, index: int) -> Optional[Dict[str, Any]]:
        """The sample of row ``index``. A bad row raises (with file and line); with ``skip_bad_rows`` it is counted
        and, in evaluation, dropped (None), while in training another row, drawn at random, takes its place: a
        training batch is never empty, which fairseq would replace by a dummy batch and count as an update."""
        index = int(index)
        sample = self.sample_or_none(index)
        if sample is not None:
            return sample
        self.num_skipped += 1
        if not self.shuffle:
            return None
        return dict(self.replacement(index), replaced=True)

    def sample_or_none(self, index: int) -> Optional[Dict[str, Any]]:
        """The sample of row ``index``, or None for a bad row with ``skip_bad_rows`` (noted in ``bad_rows``)."""
        if index in self.bad_rows:
            return None
        try:
            sample = self.build_sample(self.reader.row(index), index)
        except ValueError as err:
            message = self.located_message(err, index)
            if self.skip_bad_rows:
                self.note_bad_row(index, message)
                return None
            if message == str(err):
                raise
            raise error_with_message(err, message) from err
        sample["index"] = index
        return sample

    def replacement(self, index: int) -> Dict[str, Any]:
        """A good row's sample in place of bad row ``index``: random draws (seeded by seed, epoch and index), then
        every row in order; raises when no row of the split is good. Rows found bad on the way are noted, and
        counted at their own turn."""
        draws = np.random.RandomState([self.seed, self.epoch, index]).randint(len(self), size=REPLACEMENT_DRAWS)
        for other in itertools.chain(draws.tolist(), range(len(self))):
            sample = self.sample_or_none(other)
            if sample is not None:
                return sample
        first = self.skipped_rows[0][1] if self.skipped_rows else "?"
        raise ValueError(f"{self.reader.path}: no row of the {self.split} split can be read (--skip-bad-rows skipped "
                         f"all {len(self)}; the first: {first})")

    def located_message(self, err: ValueError, index: int) -> str:
        """The message of ``err`` with ``path:line:`` in front, unless it already names them."""
        where = f"{self.reader.path}:{self.reader.line_number(index)}"
        return str(err) if where in str(err) else f"{where}: {err}"

    def note_bad_row(self, index: int, reason: str) -> None:
        """Remembers a bad row (it is not read again by this process) and logs the first ``MAX_LOGGED_SKIPS``."""
        self.bad_rows.add(index)
        if len(self.skipped_rows) < MAX_LOGGED_SKIPS:
            self.skipped_rows.append((self.reader.line_number(index), reason))
            logger.warning("skipped bad row (--skip-bad-rows): %s", reason)
            if len(self.skipped_rows) == MAX_LOGGED_SKIPS:
                logger.warning("%s: further skipped rows are counted, not logged", self.reader.path)

    def skipped_summary(self) -> str:
        """What this process skipped (DataLoader workers count their own: the batches carry ``num_skipped``)."""
        if not self.num_skipped:
            return f"{self.reader.path}: no rows skipped"
        lines = ", ".join(str(line) for line, _ in self.skipped_rows)
        more = "" if len(self.bad_rows) <= len(self.skipped_rows) else ", ..."
        return f"{self.reader.path}: skipped {self.num_skipped} bad rows (lines {lines}{more})"

    def encode(self, text: str, length: Optional[int] = None, append_bos: bool = False,
               append_eos: bool = False) -> torch.LongTensor:
        """:func:`encode_text` with this dataset's dictionary and BPE (mind the leading space)."""
        return encode_text(text, self.dictionary, self.bpe, length=length, append_bos=append_bos,
                           append_eos=append_eos)

    def target_and_prev_output_tokens(self, tokens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(tokens + ``</s>``, ``<s>`` + tokens): the decoder's target and its teacher-forced input."""
        return (torch.cat([tokens, tokens.new_tensor([self.eos])]),
                torch.cat([tokens.new_tensor([self.bos]), tokens]))

    # ---- batches ----------------------------------------------------------------------------------------
    def collater(self, samples: List[Optional[dict]]) -> Dict[str, Any]:
        """OFA's batch: ``id`` (dataset indices), ``uniq_ids``, ``nsentences``, ``ntokens``, ``net_input``
        (``src_tokens`` ... right-padded with ``<pad>``), ``target``, ``conf``, pass-through lists,
        ``num_skipped`` (bad rows of this batch, dropped or replaced) and ``split``. No samples at all is ``{}``
        (fairseq's empty shard); bad rows only, a :func:`stand_in_batch`."""
        kept = [sample for sample in samples if sample is not None]
        if not kept:
            return stand_in_batch(self.collater([self.replacement(0)]), len(samples)) if samples else {}
        batch: Dict[str, Any] = {
            "id": torch.tensor([sample["index"] for sample in kept], dtype=torch.long),
            "uniq_ids": [sample.get("id") for sample in kept],
            "nsentences": len(kept),
            "net_input": {},
            "num_skipped": len(samples) - len(kept) + replaced_rows(samples),
            "split": self.split,  # e.g. which validation subset a batch is from (--valid-subset valid,test)
        }
        consumed = {"id", "index", "replaced"}
        for name, field in self.batch_fields.items():
            consumed.update(field.keys)
            value = field.collate(self, kept)
            if value is not None:
                (batch["net_input"] if field.net_input else batch)[name] = value
        for key in dict.fromkeys(key for sample in kept for key in sample):
            if key not in consumed:
                batch[key] = [sample.get(key) for sample in kept]
        counted = batch["target"] if "target" in batch else batch["net_input"]["src_tokens"]
        batch["ntokens"] = int(counted.ne(self.pad).sum())  # target tokens, as fairseq's criterions expect
        return batch

    # ---- order, sizes, shards ---------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def can_reuse_epoch_itr_across_epochs(self) -> bool:
        return False  # each epoch has its own order: fairseq must ask ordered_indices again

    def ordered_indices(self) -> np.ndarray:
        """A permutation that depends only on (seed, epoch) when shuffling; the file order otherwise."""
        if not self.shuffle:
            return np.arange(len(self), dtype=np.int64)
        return np.random.RandomState([self.seed, self.epoch]).permutation(len(self)).astype(np.int64)

    def num_tokens(self, index: int) -> int:
        # Bounds, not true lengths: measuring would mean building every sample (decoding its media).
        return max(self.max_src_length, self.max_tgt_length)

    def num_tokens_vec(self, indices: np.ndarray) -> np.ndarray:
        return np.full(len(indices), max(self.max_src_length, self.max_tgt_length), dtype=np.int64)

    def size(self, index: int) -> Tuple[int, int]:
        return self.max_src_length, self.max_tgt_length

    def batch_by_size(self, indices, max_tokens=None, max_sentences=None, required_batch_size_multiple=1):
        if len(indices) == 0:
            return []  # fairseq's check of the last batch fails on no batch at all
        batches = list(super().batch_by_size(indices, max_tokens=max_tokens, max_sentences=max_sentences,
                                             required_batch_size_multiple=required_batch_size_multiple))
        # fairseq drops a last batch whose size is not a multiple of --required-batch-size-multiple (8 by default):
        # up to 7 samples of every split, all of a split smaller than 8, would go unscored (with --batch-size 4,
        # every batch is such a one). Those samples are the tail of ``indices`` (batches are consecutive runs of
        # it) and are kept as a last, smaller batch.
        batched = sum(len(batch) for batch in batches)
        if batched < len(indices):
            batches.append(np.asarray(indices[batched:], dtype=np.int64))
        return pad_batches_to_multiple(batches, self.num_shards)


class MediaTextDataset(UnivalDataset):
    """Rows with one media column: ``load_media(field, rng)`` turns it into the model's input tensor, stored under
    ``media_key`` with ``patch_type`` (0 image, 1 video, 2 audio). Training randomness (frames, crops) is fixed by
    (seed, epoch, row), so runs are reproducible; evaluation gets no generator and is deterministic."""

    def __init__(self, *args, load_media: Callable, media_key: str = "patch_image", patch_type: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.load_media = load_media
        self.media_key = media_key
        self.patch_type = patch_type

    def media_entries(self, field: str, index: int) -> Dict[str, Any]:
        rng = np.random.default_rng((self.seed, self.epoch, index)) if self.shuffle else None
        return {self.media_key: self.load_media(field, rng), "patch_mask": torch.tensor(True),
                "patch_type": self.patch_type}
