"""Task ``caption``: image -> caption, with the prompt " what does the image describe?" and CIDEr-D on
the validation split during training."""
import logging
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional

from fairseq.sequence_generator import SequenceGenerator
from fairseq.tasks import register_task

from unival.data_utils.dataset import MediaTextDataset
from unival.data_utils.tsv import TSVReader
from unival.data_utils.vocab import normalize_caption
from unival.metrics import cider_d, cider_document_frequency
from unival.task_metrics import log_ratio
from unival.tasks.base import UnivalTask, UnivalTaskConfig, readable_rows

logger = logging.getLogger(__name__)

PROMPT = " what does the image describe?"
REFERENCE_SEPARATOR = "&&"


@dataclass
class CaptionConfig(UnivalTaskConfig):
    max_caption_words: int = field(default=20, metadata={"help": "captions are cut to this many words"})
    eval_cider: bool = field(default=True, metadata={"help": "report CIDEr-D of generated captions in validation"})
    eval_beam: int = field(default=5, metadata={"help": "beam size of validation decoding"})
    eval_max_len: int = field(default=22, metadata={"help": "longest caption generated in validation"})
    eval_no_repeat_ngram_size: int = field(default=3, metadata={"help": "n-grams never repeated in validation"})
    eval_print_samples: bool = field(default=False, metadata={"help": "log a generated caption per batch"})


class CaptionDataset(MediaTextDataset):
    """Rows ``id, media-id, caption, objects, media``; references of evaluation rows are joined by ``&&``."""

    def __init__(self, *args, prompt: str = PROMPT, max_caption_words: int = 20,
                 media_references: Optional[Dict[str, List[str]]] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_caption_words = max_caption_words
        self.prompt = self.encode(prompt, append_bos=True, append_eos=True)
        # media id -> every reference of that image in the split (SCST rewards a caption against all of them)
        self.media_references = media_references

    def build_sample(self, row: List[str], index: int) -> Dict:
        if len(row) < 5:
            raise ValueError(f"expected columns id, media id, caption, objects, media; got {len(row)}")
        uniq_id, media_id, caption, _, media = row[:5]
        references = [normalize_caption(text, self.max_caption_words) for text in caption.split(REFERENCE_SEPARATOR)]
        references = [text for text in references if text]
        if not references:
            raise ValueError(f"empty caption {caption!r}")
        target, prev_output_tokens = self.target_and_prev_output_tokens(
            self.encode(" " + references[0], length=self.max_tgt_length))
        if self.media_references is not None:
            references = self.media_references.get(media_id, references)
        return {
            "id": uniq_id,
            "source": self.prompt,
            **self.media_entries(media, index),
            "target": target,
            "prev_output_tokens": prev_output_tokens,
            "references": references,
        }


@register_task("caption", dataclass=CaptionConfig)
class CaptionTask(UnivalTask):
    cfg: CaptionConfig

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.document_frequency = {}

    @classmethod
    def corpus_texts(cls, rows: Iterable[List[str]]) -> Iterable[str]:
        yield cls.prompt
        for row in rows:
            for caption in row[2].split(REFERENCE_SEPARATOR):
                yield " " + normalize_caption(caption, 10_000)

    prompt = PROMPT

    def build_dataset(self, split: str, reader: TSVReader) -> CaptionDataset:
        training = self.is_training_split(split)
        media_references = None
        # CIDEr-D weighs n-grams by their rarity among the references of the split scored: the validation split
        # for validation, the training split for an SCST reward (the criterion asks for it, see build_criterion).
        if (self.cfg.eval_cider and not training) or (training and self.needs_training_frequency):
            grouped = self.split_references(reader)
            self.document_frequency[split] = cider_document_frequency(grouped.values())
            if training:
                # SCST rewards each sampled caption against every reference of its image, whether the file holds
                # one caption a row (unival prepare) or all of an image's joined by && (OFA's stage-2 layout)
                media_references = {media_id: [text for text in texts if text] for media_id, texts in grouped.items()}
        return CaptionDataset(**self.media_dataset_arguments(split, reader), prompt=self.prompt,
                              max_caption_words=self.cfg.max_caption_words, media_references=media_references)

    needs_training_frequency = False

    def build_criterion(self, cfg):
        criterion = super().build_criterion(cfg)
        self.needs_training_frequency = getattr(cfg, "_name", None) == "scst_reward_criterion"
        return criterion

    def split_references(self, reader: TSVReader) -> Dict[str, List[str]]:
        """Normalised reference captions of a split by media id (training files hold one caption a row)."""
        references: Dict[str, List[str]] = {}
        for row in readable_rows(reader, self.cfg.skip_bad_rows):
            references.setdefault(row[1], []).extend(
                normalize_caption(text, self.cfg.max_caption_words) for text in row[2].split(REFERENCE_SEPARATOR))
        return references

    def caption_generator(self, models) -> SequenceGenerator:
        return SequenceGenerator(models, self.target_dictionary, beam_size=self.cfg.eval_beam, max_len_a=0,
                                 max_len_b=self.cfg.eval_max_len,
                                 no_repeat_ngram_size=self.cfg.eval_no_repeat_ngram_size)

    def predict(self, model, sample) -> List[str]:
        """The caption of every sample of the batch, with the validation decoding options (--eval-beam ...)."""
        hypotheses = self.inference_step(self.caption_generator([model]), [model], sample)
        return [self.decode(hypos[0]["tokens"]) for hypos in hypotheses]

    def add_valid_metrics(self, sample, model, logging_output) -> None:
        if self.cfg.eval_cider:
            predictions = dict(enumerate(self.predict(model, sample)))
            references = dict(enumerate(sample["references"]))
            # the n-gram document frequencies of the batch's own subset (--valid-subset valid,test: each its own)
            frequency = self.document_frequency.get(sample.get("split", self.cfg.valid_subset.split(",")[0]))
            _, scores = cider_d(predictions, references, document_frequency=frequency)
            logging_output["_cider_score_sum"] = float(sum(scores))
            logging_output["_cider_count"] = len(scores)
            if self.cfg.eval_print_samples:
                logger.info("example hypothesis: %s | reference: %s", predictions[0], references[0][0])

    def reduce_metrics(self, logging_outputs, criterion) -> None:
        super().reduce_metrics(logging_outputs, criterion)
        log_ratio("cider", "_cider_score_sum", "_cider_count", logging_outputs)
