"""Task ``snli_ve`` (visual entailment): image + hypothesis (optionally the premise caption too) -> yes / no /
maybe, the answer chosen among the three by its probability; accuracy in validation."""
import logging
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional

from fairseq.tasks import register_task

from unival.constrained import TrieConstraint, constrained_generator, score_candidates
from unival.data_utils.dataset import MediaTextDataset
from unival.data_utils.trie import Trie
from unival.data_utils.tsv import TSVReader
from unival.data_utils.vocab import encode_text, normalize_phrase
from unival.task_metrics import log_accuracy
from unival.tasks.base import UnivalTask, UnivalTaskConfig

logger = logging.getLogger(__name__)

ANSWERS = ("yes", "no", "maybe")
# SNLI-VE's labels and the answers the model gives for them; the answers themselves are accepted as labels too.
LABEL_ANSWERS = {"entailment": "yes", "contradiction": "no", "neutral": "maybe", **{a: a for a in ANSWERS}}
METRIC = "ve_accuracy"  # percent of answers equal to the label (named apart from the criterion's token accuracy)


def answer_of_label(label: str) -> str:
    """yes / no / maybe for a label (``entailment``, ``contradiction``, ``neutral`` or the answer itself)."""
    answer = LABEL_ANSWERS.get(label.strip().lower())
    if answer is None:
        raise ValueError(f"unknown label {label!r} (expected one of {', '.join(LABEL_ANSWERS)})")
    return answer


def entailment_prompt(hypothesis: str, premise: Optional[str] = None) -> str:
    """The encoder text (normalised phrases), as OFA words it: with the premise when one is given."""
    if premise is None:
        return f' does the image describe " {hypothesis} "?'
    return f' can image and text1 " {premise} " imply text2 " {hypothesis} "?'


@dataclass
class SnliVeConfig(UnivalTaskConfig):
    add_caption: bool = field(
        default=False, metadata={"help": "put the premise caption in the prompt too (' can image and text1 \" P \" "
                                         "imply text2 \" H \"?')"})
    unconstrained_training: bool = field(
        default=False, metadata={"help": "compute the loss (training and validation) over the whole vocabulary "
                                         "instead of over the three answers' tokens"})
    eval_acc: bool = field(default=True, metadata={"help": "report the accuracy of the answers in validation"})
    eval_print_samples: bool = field(default=False, metadata={"help": "log a predicted answer per batch"})


class SnliVeDataset(MediaTextDataset):
    """Rows ``id, image-id, image, hypothesis, premise, label``; the target is " yes", " no" or " maybe" and
    ``</s>``, the sample keeps the answer as ``references``. With ``trie`` each sample carries the mask of the answers'
    tokens, so that the loss spreads over those only."""

    def __init__(self, *args, add_caption: bool = False, trie: Optional[Trie] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_caption = add_caption
        self.trie = trie

    def build_sample(self, row: List[str], index: int) -> Dict:
        if len(row) < 6:
            raise ValueError(f"expected columns id, image id, image, hypothesis, premise, label; got {len(row)}")
        uniq_id, _, image, hypothesis, premise, label = row[:6]
        answer = answer_of_label(label)
        hypothesis = normalize_phrase(hypothesis, self.max_src_length)
        if not hypothesis:
            raise ValueError(f"empty hypothesis {row[3]!r}")
        premise = normalize_phrase(premise, self.max_src_length) if self.add_caption else None
        if premise == "":
            raise ValueError(f"empty premise {row[4]!r} (--add-caption puts it in the prompt)")
        target, prev_output_tokens = self.target_and_prev_output_tokens(self.encode(" " + answer))
        sample = {
            "id": uniq_id,
            "source": self.encode(entailment_prompt(hypothesis, premise), length=self.max_src_length,
                                  append_bos=True, append_eos=True),
            **self.media_entries(image, index),
            "target": target,
            "prev_output_tokens": prev_output_tokens,
            "references": answer,
        }
        if self.trie is not None:
            sample["constraint_mask"] = self.trie.target_masks(target, len(self.dictionary), self.pad)
        return sample


@register_task("snli_ve", dataclass=SnliVeConfig)
class SnliVeTask(UnivalTask):
    cfg: SnliVeConfig

    def vocabulary_ready(self) -> None:
        # Each answer as targets hold it (leading space, </s>): the candidates scored and the trie of decoding.
        self.candidates = [encode_text(" " + answer, self.dictionary, self.bpe, append_eos=True) for answer in ANSWERS]
        self.trie = Trie(candidate.tolist() for candidate in self.candidates)

    @classmethod
    def required_texts(cls, cfg: SnliVeConfig) -> Iterable[str]:
        return [" " + answer for answer in ANSWERS]

    @classmethod
    def corpus_texts(cls, rows: Iterable[List[str]]) -> Iterable[str]:
        for row in rows:
            hypothesis, premise = normalize_phrase(row[3]), normalize_phrase(row[4])
            yield entailment_prompt(hypothesis)
            yield entailment_prompt(hypothesis, premise)

    def build_dataset(self, split: str, reader: TSVReader) -> SnliVeDataset:
        # Validation computes its loss as training does, so that the two compare.
        trie = None if self.cfg.unconstrained_training else self.trie
        return SnliVeDataset(**self.media_dataset_arguments(split, reader), add_caption=self.cfg.add_caption,
                             trie=trie)

    def build_generator(self, models, args, seq_gen_cls=None, extra_gen_cls_kwargs=None, prefix_allowed_tokens_fn=None):
        """fairseq-generate's generator: beam search inside the trie of the three answers (D- lines read yes, no or
        maybe). The beam is capped at three: wider beams would only hold hypotheses outside the answers."""
        beam = min(getattr(args, "beam", len(ANSWERS)), len(ANSWERS))
        longest = max(len(candidate) for candidate in self.candidates)
        return constrained_generator(models, self.target_dictionary, TrieConstraint(self.trie), beam_size=beam,
                                     max_len_a=0, max_len_b=longest)

    def predict(self, model, sample) -> List[str]:
        """The most probable of yes / no / maybe for every sample of the batch (each scored over the answers'
        tokens only, as constrained training and decoding see them)."""
        scores = score_candidates(model, sample, self.candidates, self.dictionary.bos(), self.dictionary.pad(),
                                  allowed=self.trie)
        return [ANSWERS[index] for index in scores.argmax(-1).tolist()]

    def add_valid_metrics(self, sample, model, logging_output) -> None:
        if self.cfg.eval_acc:
            predictions = self.predict(model, sample)
            hits = [prediction == label for prediction, label in zip(predictions, sample["references"])]
            logging_output[f"_{METRIC}_hits"] = sum(hits)
            logging_output[f"_{METRIC}_count"] = len(hits)
            if self.cfg.eval_print_samples:
                logger.info("example answer: %s | label: %s", predictions[0], sample["references"][0])

    def reduce_metrics(self, logging_outputs, criterion) -> None:
        super().reduce_metrics(logging_outputs, criterion)
        log_accuracy(METRIC, logging_outputs)
