"""Task ``refcoco`` (visual grounding): image + referring expression -> the region's box as four ``<bin>`` tokens,
decoded with exactly four bins (beam 5); Acc@0.5 overall and by box size in validation."""
import logging
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from fairseq.sequence_generator import SequenceGenerator
from fairseq.tasks import register_task
from PIL import Image

from unival.constrained import RangeConstraint, constrained_generator
from unival.data_utils.dataset import MediaTextDataset
from unival.data_utils.media import load_image
from unival.data_utils.transforms import (bins_to_box, box_to_bins, checked_box,
                                          parse_box, resize_box)
from unival.data_utils.tsv import TSVReader
from unival.data_utils.vocab import first_bin_index, normalize_phrase
from unival.task_metrics import SIZE_BUCKETS, box_size_bucket, grounding_hits, log_accuracy
from unival.tasks.base import UnivalTask, UnivalTaskConfig

logger = logging.getLogger(__name__)

NUM_BOX_TOKENS = 4
BIN_TOKEN = re.compile(r"<bin_(\d+)>")
METRIC = "acc50"  # Acc@0.5 in percent; per size bucket "acc50_small", "acc50_medium", "acc50_large"


def region_prompt(expression: str) -> str:
    """The encoder text of a (normalised) referring expression, as OFA words it."""
    return f' which region does the text " {expression} " describe?'


def bins_from_text(text: str) -> List[int]:
    """The four bin numbers of a decoded hypothesis (``"<bin_12><bin_40><bin_3><bin_99>"``, the D- line of
    fairseq-generate, or the space-separated H- line); ValueError naming the text otherwise."""
    bins = [int(k) for k in BIN_TOKEN.findall(text)]
    if len(bins) != NUM_BOX_TOKENS or BIN_TOKEN.sub("", text).strip():
        raise ValueError(f"expected exactly {NUM_BOX_TOKENS} <bin_k> tokens and nothing else, got {text!r}")
    return bins


def read_region(text: str, box_text: str, image_field: str, data_dir: Optional[str], patch_image_size: int,
                num_bins: int, max_words: int) -> Tuple[str, Image.Image, Tuple[float, ...], List[int]]:
    """(normalised expression, decoded image, box clipped to the image, its four bins in the image resized to a
    ``patch_image_size`` square) of a grounding row's text, box and image columns; ValueError for an empty
    expression, a malformed box or one outside the image."""
    expression = normalize_phrase(text, max_words)
    if not expression:
        raise ValueError(f"empty referring expression {text!r}")
    box = parse_box(box_text)
    image = load_image(image_field, data_dir)
    box = checked_box(box, image.size)
    resized = resize_box(box, image.size, patch_image_size)
    return expression, image, box, box_to_bins(resized, patch_image_size, num_bins)


@dataclass
class RefcocoConfig(UnivalTaskConfig):
    eval_acc: bool = field(default=True, metadata={"help": "report Acc@0.5 (overall and by box size) of the boxes "
                                                           "generated in validation"})
    eval_beam: int = field(default=5, metadata={"help": "beam size of validation decoding"})
    constrain_loss_to_bins: bool = field(
        default=True, metadata={"help": "restrict the loss to the <bin> tokens: sets the criterion's "
                                        "--constraint-range to their ids when it has that option and it is not given"})
    eval_print_samples: bool = field(default=False, metadata={"help": "log a predicted box per batch"})


class RefcocoDataset(MediaTextDataset):
    """Rows ``id, image-id, text, x0,y0,x1,y1, image`` (box in pixels of the original image). The image is resized
    to a ``patch_image_size`` square (no crop: the box must stay whole) and the box with it; the target is its
    four bins ``round(c / S * (num_bins - 1))`` and ``</s>``. Samples keep ``references`` (the box in the original
    image, as ``unival evaluate`` reads it) and ``image_size`` (original width, height) to map predictions back.

    ``load_media`` takes the decoded PIL image: the dataset needs the image's size before the transform.
    """

    def __init__(self, *args, patch_image_size: int, num_bins: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.patch_image_size = patch_image_size
        self.num_bins = num_bins
        self.first_bin = first_bin_index(self.dictionary)

    def build_sample(self, row: List[str], index: int) -> Dict:
        if len(row) < 5:
            raise ValueError(f"expected columns id, image id, text, box x0,y0,x1,y1, image; got {len(row)}")
        uniq_id, _, text, box_text, image_field = row[:5]
        expression, image, box, bins = read_region(text, box_text, image_field, self.data_dir,
                                                   self.patch_image_size, self.num_bins, self.max_src_length)
        target, prev_output_tokens = self.target_and_prev_output_tokens(torch.tensor(bins) + self.first_bin)
        return {
            "id": uniq_id,
            "source": self.encode(region_prompt(expression), length=self.max_src_length, append_bos=True,
                                  append_eos=True),
            **self.media_entries(image, index),
            "target": target,
            "prev_output_tokens": prev_output_tokens,
            "references": box,
            "image_size": image.size,
        }


@register_task("refcoco", dataclass=RefcocoConfig)
class RefcocoTask(UnivalTask):
    """Grounding on RefCOCO, RefCOCO+ and RefCOCOg (the same TSV format).

    Acc@0.5: a predicted box is right when its IoU with the ground truth, both in pixels of the original image,
    is at least 0.5. Accuracy by size groups the ground-truth boxes by area in the original image with COCO's
    thresholds: small < 32^2, medium 32^2 to < 96^2, large >= 96^2 pixels.
    """

    cfg: RefcocoConfig

    @property
    def bin_range(self) -> Tuple[int, int]:
        """Ids ``[start, end)`` of the ``<bin>`` tokens."""
        start = first_bin_index(self.dictionary)
        return start, start + self.cfg.num_bins

    @classmethod
    def corpus_texts(cls, rows: Iterable[List[str]]) -> Iterable[str]:
        for row in rows:
            yield region_prompt(normalize_phrase(row[2]))

    def media_loader(self, training: bool) -> Callable:
        """(PIL image, rng) -> (3, S, S): a plain resize also in training, since a random crop could cut the box."""
        transform = self.image_transform(training)
        return lambda image, rng: transform(image)

    def build_dataset(self, split: str, reader: TSVReader) -> RefcocoDataset:
        return RefcocoDataset(**self.media_dataset_arguments(split, reader), patch_image_size=self.cfg.patch_image_size,
                              num_bins=self.cfg.num_bins)

    def build_criterion(self, cfg, from_checkpoint=False):
        if self.cfg.constrain_loss_to_bins and getattr(cfg, "constraint_range", False) is None:
            cfg.constraint_range = "{},{}".format(*self.bin_range)
            logger.info("loss restricted to the <bin> tokens: --constraint-range %s", cfg.constraint_range)
        return super().build_criterion(cfg, from_checkpoint)

    # ---- boxes ------------------------------------------------------------------------------------------
    def box_generator(self, models: Sequence, beam: int) -> SequenceGenerator:
        """Beam search over exactly four ``<bin>`` tokens, then ``</s>``."""
        start, end = self.bin_range
        constraint = RangeConstraint(start, end, NUM_BOX_TOKENS, self.target_dictionary.eos())
        return constrained_generator(models, self.target_dictionary, constraint, beam_size=beam, max_len_a=0,
                                     max_len_b=NUM_BOX_TOKENS, min_len=NUM_BOX_TOKENS)

    def build_generator(self, models, args, seq_gen_cls=None, extra_gen_cls_kwargs=None, prefix_allowed_tokens_fn=None):
        """fairseq-generate's generator: its ``--beam``, four ``<bin>`` tokens. Its H- lines read
        ``<bin_a> <bin_b> <bin_c> <bin_d>`` and D- lines ``<bin_a><bin_b><bin_c><bin_d>`` (see :func:`bins_from_text`),
        bins of the image resized to the square patch size."""
        return self.box_generator(models, getattr(args, "beam", self.cfg.eval_beam))

    def predicted_boxes(self, generator: SequenceGenerator, model, sample) -> torch.Tensor:
        """(B, 4) best boxes of the batch in pixels of the original images: bin k of an image resized to S stands
        for k / (num_bins - 1) * S, which is k / (num_bins - 1) * W back in an image of width W."""
        hypotheses = self.inference_step(generator, [model], sample)
        start = self.bin_range[0]
        boxes = [bins_to_box((hypos[0]["tokens"][:NUM_BOX_TOKENS] - start).tolist(), size, self.cfg.num_bins)
                 for hypos, size in zip(hypotheses, sample["image_size"])]
        return torch.tensor(boxes, dtype=torch.float64)

    def predict(self, model, sample) -> List[List[float]]:
        """The box ``[x0, y0, x1, y1]`` in pixels of the original image of every sample of the batch (beam
        ``--eval-beam``)."""
        return self.predicted_boxes(self.box_generator([model], self.cfg.eval_beam), model, sample).tolist()

    # ---- validation -------------------------------------------------------------------------------------
    def add_valid_metrics(self, sample, model, logging_output) -> None:
        if self.cfg.eval_acc:
            predicted = torch.tensor(self.predict(model, sample), dtype=torch.float64)
            truth = torch.tensor(sample["references"], dtype=torch.float64)
            hits = grounding_hits(predicted, truth).tolist()
            buckets = [box_size_bucket(box) for box in truth.tolist()]
            logging_output[f"_{METRIC}_hits"] = sum(hits)
            logging_output[f"_{METRIC}_count"] = len(hits)
            for bucket in SIZE_BUCKETS:
                chosen = [hit for hit, name in zip(hits, buckets) if name == bucket]
                logging_output[f"_{METRIC}_{bucket}_hits"] = sum(chosen)
                logging_output[f"_{METRIC}_{bucket}_count"] = len(chosen)
            if self.cfg.eval_print_samples:
                logger.info("example box: %s | ground truth: %s", predicted[0].tolist(), truth[0].tolist())

    def reduce_metrics(self, logging_outputs, criterion) -> None:
        super().reduce_metrics(logging_outputs, criterion)
        for name in [METRIC] + [f"{METRIC}_{bucket}" for bucket in SIZE_BUCKETS]:
            log_accuracy(name, logging_outputs)

