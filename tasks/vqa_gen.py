"""Task ``vqa_gen``: image + question -> answer, generated within the answer list (a trie constrains beam search)
or chosen by scoring every candidate; VQA soft accuracy in validation, optionally with the EMA weights."""
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional

import torch
from fairseq import metrics
from fairseq.dataclass import ChoiceEnum
from fairseq.sequence_generator import SequenceGenerator
from fairseq.tasks import register_task

from unival.constrained import ConstrainedEnsemble, TrieConstraint, constrained_generator, score_candidates
from unival.data_utils.answers import answer_confidences, read_answer_list
from unival.data_utils.dataset import MediaTextDataset
from unival.data_utils.trie import Trie
from unival.data_utils.tsv import TSVReader
from unival.data_utils.vocab import encode_text, normalize_question
from unival.task_metrics import log_accuracy, summed
from unival.tasks.base import UnivalTask, UnivalTaskConfig

logger = logging.getLogger(__name__)

ANSWER_LIST = "answers.txt"
INFERENCE_TYPES = ChoiceEnum(["beamsearch", "allcand"])


def vqa_score(prediction: str, confidences: Dict[str, float]) -> float:
    """VQA soft accuracy of one prediction: the confidence of the matching reference answer (min(1, humans / 3)
    in VQAv2's files), 0 when no reference matches."""
    return confidences.get(prediction.strip(), 0.0)


@dataclass
class VqaGenConfig(UnivalTaskConfig):
    answer_list: Optional[str] = field(
        default=None, metadata={"help": "candidate answers, one a line (default: <data>/answers.txt when present; "
                                        "without a list, decoding is unconstrained)"})
    unconstrained_training: bool = field(
        default=False, metadata={"help": "train over the whole vocabulary instead of the answer trie's tokens"})
    val_inference_type: INFERENCE_TYPES = field(
        default="beamsearch", metadata={"help": "beamsearch: beam search inside the answer trie; allcand: score every "
                                                "candidate answer and take the most probable"})
    eval_accuracy: bool = field(default=True, metadata={"help": "report VQA accuracy of the answers in validation"})
    eval_beam: int = field(default=5, metadata={"help": "beam size of validation decoding"})
    eval_max_len: int = field(
        default=10, metadata={"help": "longest answer generated without an answer list (with one, its longest answer)"})
    candidate_chunk_size: int = field(default=256, metadata={"help": "candidates scored per forward pass (allcand)"})
    eval_print_samples: bool = field(default=False, metadata={"help": "log a predicted answer per batch"})


class VqaGenDataset(MediaTextDataset):
    """Rows ``question-id, media-id, question, answers, objects, media`` (answers ``conf|!+ans&&...``; empty for
    test questions). The target is the most confident answer, weighted by its confidence in the loss."""

    def __init__(self, *args, trie: Optional[Trie] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.trie = trie
        self.warned_unlisted = False

    def build_sample(self, row: List[str], index: int) -> Dict:
        if len(row) < 6:
            raise ValueError(f"expected columns question id, media id, question, answers, objects, media; "
                             f"got {len(row)}")
        uniq_id, _, question, answers, _, media = row[:6]
        question = normalize_question(question)
        if not question.strip(" ?"):
            raise ValueError(f"empty question {row[2]!r}")
        confidences = answer_confidences(answers)
        if not confidences and self.shuffle:
            raise ValueError("a training question without answers")
        sample = {
            "id": uniq_id,
            "source": self.encode(" " + question, length=self.max_src_length, append_bos=True, append_eos=True),
            **self.media_entries(media, index),
            "references": confidences,
        }
        if confidences:
            answer = max(confidences, key=confidences.get)  # the first of the most confident
            target, prev_output_tokens = self.target_and_prev_output_tokens(
                self.encode(" " + answer, length=self.max_tgt_length))
            sample.update(target=target, prev_output_tokens=prev_output_tokens, conf=confidences[answer])
            if self.trie is not None:
                listed = target.tolist() in self.trie
                sample["constraint_mask"] = self.answer_mask(target, listed)
                sample["unlisted"] = not listed
                if not listed and not self.warned_unlisted:
                    self.warned_unlisted = True
                    logger.warning("%s:%d: answer %r is not in the answer list: the loss of such answers spreads over "
                                   "the whole vocabulary (the logs count them as unlisted_answers)", self.reader.path,
                                   self.reader.line_number(index), answer)
        else:  # test questions: a placeholder target of just </s>, never scored by accuracy
            target, prev_output_tokens = self.target_and_prev_output_tokens(self.encode(""))
            sample.update(target=target, prev_output_tokens=prev_output_tokens)
        return sample

    def answer_mask(self, target: torch.Tensor, listed: bool) -> torch.Tensor:
        """What the trie allows at each target position; every token for an answer outside the list (``listed``
        false: its loss would otherwise be infinite; counted as ``unlisted``)."""
        if listed:
            return self.trie.target_masks(target, len(self.dictionary), self.pad)
        return torch.ones(len(target), len(self.dictionary), dtype=torch.bool)


@register_task("vqa_gen", dataclass=VqaGenConfig)
class VqaGenTask(UnivalTask):
    cfg: VqaGenConfig
    uses_ema = True  # with --store-ema, fairseq hands valid_step the EMA model, which then answers

    def __init__(self, cfg: VqaGenConfig, *args, **kwargs):
        self.answers = self.answer_list(cfg, log=True)  # before the vocabulary's candidates are made of them
        super().__init__(cfg, *args, **kwargs)
        if self.cfg.val_inference_type == "allcand" and not self.answers:
            raise ValueError("--val-inference-type allcand needs an answer list (--answer-list)")

    def vocabulary_ready(self) -> None:
        self.candidates = [self.answer_tokens(answer) for answer in self.answers]
        unknown = [answer for answer, tokens in zip(self.answers, self.candidates)
                   if self.dictionary.unk() in tokens.tolist()]
        if unknown:
            raise ValueError(f"{len(unknown)} answers of the answer list have words outside the vocabulary "
                             f"(e.g. {unknown[:3]}); pass BART's dict.txt with --dict-file")
        self.trie = Trie(candidate.tolist() for candidate in self.candidates) if self.answers else None

    @staticmethod
    def answer_list(cfg: VqaGenConfig, log: bool = False) -> List[str]:
        """The candidate answers: --answer-list, else <data>/answers.txt when present, else none. ``log``: say
        which (once per run: the vocabulary reads the list too)."""
        path = cfg.answer_list
        if path is None:
            default = Path(cfg.data) / ANSWER_LIST
            if not default.is_file():
                if log:
                    logger.warning("no answer list (%s not found, --answer-list not given): answers are generated "
                                   "without constraint", default)
                return []
            path = str(default)
        elif not Path(path).is_file():
            raise FileNotFoundError(f"--answer-list {path}: file not found")
        answers = read_answer_list(path)
        if log:
            logger.info("answer list: %d answers from %s", len(answers), path)
        return answers

    @classmethod
    def required_texts(cls, cfg: VqaGenConfig) -> Iterable[str]:
        return [" " + answer for answer in cls.answer_list(cfg)]

    def answer_tokens(self, answer: str) -> torch.Tensor:
        """Token ids of an answer as targets hold them: the text with a leading space, then </s>."""
        return encode_text(" " + answer, self.dictionary, self.bpe, append_eos=True)

    @classmethod
    def corpus_texts(cls, rows: Iterable[List[str]]) -> Iterable[str]:
        for row in rows:
            yield " " + normalize_question(row[2])
            for answer in answer_confidences(row[3]):
                yield " " + answer

    def build_dataset(self, split: str, reader: TSVReader) -> VqaGenDataset:
        # validation loss over the same tokens as the training loss (the full vocabulary's would be meaningless)
        trie = None if self.cfg.unconstrained_training else self.trie
        return VqaGenDataset(**self.media_dataset_arguments(split, reader), trie=trie)

    # ---- answering ---------------------------------------------------------------------------------------
    def answer_generator(self, models, beam: int) -> SequenceGenerator:
        if self.trie is None:
            return SequenceGenerator(models, self.target_dictionary, beam_size=beam, max_len_a=0,
                                     max_len_b=self.cfg.eval_max_len)
        longest = max(len(candidate) for candidate in self.candidates)
        return constrained_generator(models, self.target_dictionary, TrieConstraint(self.trie), beam_size=beam,
                                     max_len_a=0, max_len_b=longest)

    def build_generator(self, models, args, seq_gen_cls=None, extra_gen_cls_kwargs=None, prefix_allowed_tokens_fn=None):
        """fairseq-generate's generator, with its options, searching inside the answer trie when there is one."""
        generator = super().build_generator(models, args, seq_gen_cls, extra_gen_cls_kwargs, prefix_allowed_tokens_fn)
        if self.trie is not None:
            generator.model = ConstrainedEnsemble(models, TrieConstraint(self.trie), self.target_dictionary.eos())
        return generator

    def predict(self, model, sample) -> List[str]:
        """The answer to every question of the batch, by ``--val-inference-type``."""
        if self.cfg.val_inference_type == "allcand":
            scores = score_candidates(model, sample, self.candidates, self.dictionary.bos(), self.dictionary.pad(),
                                      chunk_size=self.cfg.candidate_chunk_size)
            return [self.answers[index] for index in scores.argmax(-1).tolist()]
        generator = self.answer_generator([model], self.cfg.eval_beam)
        hypotheses = self.inference_step(generator, [model], sample)
        return [self.decode(hypos[0]["tokens"]).strip() for hypos in hypotheses]

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False, **kwargs):
        loss, sample_size, logging_output = super().train_step(sample, model, criterion, optimizer, update_num,
                                                               ignore_grad, **kwargs)
        logging_output["num_unlisted"] = unlisted_count(sample)
        return loss, sample_size, logging_output

    def add_valid_metrics(self, sample, model, logging_output) -> None:
        logging_output["num_unlisted"] = unlisted_count(sample)
        if self.cfg.eval_accuracy:
            predictions = self.predict(model, sample)
            scores = [vqa_score(prediction, refs) for prediction, refs in zip(predictions, sample["references"])]
            logging_output["_vqa_score_hits"] = float(sum(scores))
            logging_output["_vqa_score_count"] = len(scores)
            if self.cfg.eval_print_samples:
                logger.info("example answer: %s | references: %s", predictions[0], sample["references"][0])

    def reduce_metrics(self, logging_outputs, criterion) -> None:
        super().reduce_metrics(logging_outputs, criterion)
        log_accuracy("vqa_score", logging_outputs)  # the soft scores are summed as "hits"
        unlisted = summed(logging_outputs, "num_unlisted")
        if unlisted:
            metrics.log_scalar_sum("unlisted_answers", unlisted, priority=900, round=0)


def unlisted_count(sample) -> int:
    """Samples of the batch whose answer is not in the answer list (trained without the trie's constraint)."""
    return sum(bool(flag) for flag in sample.get("unlisted") or []) if sample else 0
