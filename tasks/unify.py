"""Task ``unify`` (pretraining): rows of image, video and audio data, each turned into the samples of its type's
objectives (captioning and caption matching, question answering and answer matching, grounding and grounded
captioning), read from several streams (``<data>/<stream>_<split>.tsv``) that every batch mixes in fixed proportions,
each stream's loss normalised on its own (task balancing, see ``data_utils/mixture.py``)."""
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional

import numpy as np
import torch
from fairseq.tasks import register_task
from omegaconf import II

from unival.data_utils.answers import answer_confidences
from unival.data_utils.dataset import (BATCH_FIELDS, BatchField, UnivalDataset, compact_media, replaced_rows,
                                       stand_in_batch)
from unival.data_utils.media import load_image
from unival.data_utils.mixture import StreamMixture, parse_stream_weights
from unival.data_utils.prepare.pretrain import UNIFY_COLUMNS
from unival.data_utils.tsv import TSVFormatError, TSVReader
from unival.data_utils.vocab import first_bin_index, normalize_caption, normalize_phrase, normalize_question
from unival.tasks.audio_caption import AudioInput
from unival.tasks.base import UnivalTask, UnivalTaskConfig
from unival.tasks.caption import REFERENCE_SEPARATOR
from unival.tasks.refcoco import read_region, region_prompt
from unival.tasks.video_caption import VideoOptions, video_loader

logger = logging.getLogger(__name__)

COLUMNS = UNIFY_COLUMNS  # uniq_id, media, caption, question, refs, gt_objects, dataset_name, type
# row type -> modality of its media
TYPES = {"caption": "image", "qa": "image", "visual_grounding": "image", "video_caption": "video",
         "video_qa": "video", "audio_caption": "audio"}
MEDIA = {"image": ("patch_image", 0), "video": ("patch_video", 1), "audio": ("patch_audio", 2)}
OBJECT_SEPARATOR = "&&"
YES, NO = " yes", " no"
# Rows read at random for a negative (another caption, answer or object) before a row gives up its matching pair.
NEGATIVE_TRIES = 16


def kinds_of(modality: str, ending: str) -> List[str]:
    """The row types of ``modality`` whose name ends with ``ending`` (``"caption"``, ``"qa"``)."""
    return [kind for kind, kind_modality in TYPES.items() if kind_modality == modality and kind.endswith(ending)]


def caption_prompt(modality: str) -> str:
    return f" what does the {modality} describe?"


def caption_matching_prompt(modality: str, caption: str) -> str:
    return f' does the {modality} describe " {caption} "?'


def answer_matching_prompt(question: str, answer: str) -> str:
    return f' what is the answer to question " {question} ". is " {answer} "?'


REGION_CAPTION_PROMPT = " what does the region describe? region:"


def row_objects(field: str) -> List[str]:
    """The object names of a ``gt_objects`` field (``"dog&&red ball"``), lowercased."""
    return [name.strip().lower() for name in field.split(OBJECT_SEPARATOR) if name.strip()]


def swap_object(caption: str, objects: List[str], replacement: str) -> Optional[str]:
    """``caption`` with the first of ``objects`` that it mentions (as whole words) replaced by ``replacement``;
    None when it mentions none."""
    for name in objects:
        pattern = re.compile(rf"\b{re.escape(name)}\b")
        if pattern.search(caption):
            return pattern.sub(replacement, caption, count=1)
    return None


@dataclass
class UnifyConfig(UnivalTaskConfig, VideoOptions):
    streams: str = field(
        default="image", metadata={"help": "comma-separated streams: each reads <data>/<stream>_<split>.tsv (with "
                                           "--tsv-prefix: <prefix>_<stream>_<split>.tsv); every training batch "
                                           "holds rows of each and their losses are normalised separately"})
    stream_weights: Optional[str] = field(
        default=None, metadata={"help": "comma-separated shares of each batch's rows (--batch-size) per stream, "
                                        "e.g. 2,1,1 (default: equal)"})
    matching_ratio: float = field(
        default=0.5, metadata={"help": "probability that a caption or question row also gives a matching pair "
                                       "(its own caption or answer -> yes, a wrong one -> no)"})
    object_swap_ratio: float = field(
        default=0.5, metadata={"help": "share of wrong captions made by swapping an object the caption names "
                                       "(gt_objects) for another row's; the rest are other rows' captions"})
    max_caption_words: int = field(default=20, metadata={"help": "captions are cut to this many words"})
    audio_clip_seconds: float = field(
        default=10.0, metadata={"help": "clip length: longer audio is cropped (randomly in training), shorter "
                                        "audio repeated"})
    audio_sample_rate: Optional[int] = II("oc.select:model.audio_sample_rate,null")


class UnifyDataset(UnivalDataset):
    """Rows ``uniq_id, media, caption, question, refs, gt_objects, dataset_name, type`` of one stream; a row gives
    one to three samples, which the collater flattens (a batch of N rows holds N or more samples):

    - caption, video_caption, audio_caption: " what does the <media> describe?" -> the caption (in training a
      random one of its ``&&`` references); with ``matching_ratio``, also ``does the <media> describe " C "?``
      -> yes for its caption and no for a wrong one (an object of ``gt_objects`` swapped, or another row's);
    - qa, video_qa: the question -> its most confident answer (the loss weighted by that confidence); with
      ``matching_ratio``, also ``what is the answer to question " Q ". is " A "?`` -> yes / no (another row's
      answer);
    - visual_grounding (caption: the text, refs: its box ``x0,y0,x1,y1``): the region prompt -> four ``<bin>``
      tokens, and " what does the region describe? region: <bin>x4" -> the text.

    Random choices depend on (seed, epoch, row) in training and on (seed, row) in evaluation.
    """

    batch_fields: Dict[str, BatchField] = {
        **BATCH_FIELDS,
        **{f"{key}s": BatchField((key,), compact_media(key)) for key, _ in MEDIA.values()},
        "stream_ids": BatchField(("stream",), lambda dataset, samples: torch.tensor(
            [int(sample.get("stream", 0)) for sample in samples], dtype=torch.long), net_input=False),
    }

    def __init__(self, *args, image_transform: Callable, load_video: Callable, load_audio: Callable,
                 patch_image_size: int, num_bins: int, matching_ratio: float = 0.5, object_swap_ratio: float = 0.5,
                 max_caption_words: int = 20, **kwargs):
        super().__init__(*args, **kwargs)
        self.image_transform = image_transform
        self.loaders = {"video": load_video, "audio": load_audio}
        self.patch_image_size = patch_image_size
        self.num_bins = num_bins
        self.matching_ratio = matching_ratio
        self.object_swap_ratio = object_swap_ratio
        self.max_caption_words = max_caption_words
        self.first_bin = first_bin_index(self.dictionary)

    # ---- rows -> samples --------------------------------------------------------------------------------
    def choice_rng(self, index: int) -> np.random.Generator:
        key = (self.seed, self.epoch, index, 1) if self.shuffle else (self.seed, index, 1)
        return np.random.default_rng(key)

    def build_sample(self, row: List[str], index: int) -> Dict[str, Any]:
        if len(row) < len(COLUMNS):
            raise ValueError(f"expected columns {', '.join(COLUMNS)}; got {len(row)}")
        uniq_id, media, caption, question, refs, objects, _, kind = row[:len(COLUMNS)]
        kind = kind.strip()
        if kind not in TYPES:
            raise ValueError(f"unknown type {kind!r} (expected one of {', '.join(TYPES)})")
        rng = self.choice_rng(index)
        if kind == "visual_grounding":
            samples = self.grounding_samples(media, caption, refs, index)
        elif kind.endswith("qa"):
            samples = self.question_samples(TYPES[kind], media, question, refs, index, rng)
        else:
            samples = self.caption_samples(TYPES[kind], media, caption, objects, index, rng)
        for sample in samples:
            sample["id"] = uniq_id
        return {"samples": samples}

    def media_entries(self, modality: str, field: str, index: int, image=None) -> Dict[str, Any]:
        """The model input of a row's media column (``image``: the column's image, when already decoded)."""
        key, patch_type = MEDIA[modality]
        if modality == "image":
            tensor = self.image_transform(image if image is not None else load_image(field, self.data_dir))
        else:
            rng = np.random.default_rng((self.seed, self.epoch, index)) if self.shuffle else None
            tensor = self.loaders[modality](field, rng)
        return {key: tensor, "patch_mask": torch.tensor(True), "patch_type": patch_type}

    def text_sample(self, objective: str, media: Dict[str, Any], source: torch.Tensor, answer,
                    conf: Optional[float] = None) -> Dict[str, Any]:
        """A sample of ``source`` tokens -> ``answer`` (text with its leading space, or token ids)."""
        tokens = answer if torch.is_tensor(answer) else self.encode(answer, length=self.max_tgt_length)
        target, prev_output_tokens = self.target_and_prev_output_tokens(tokens)
        sample = {"source": source, **media, "target": target, "prev_output_tokens": prev_output_tokens,
                  "objective": objective}
        if conf is not None:
            sample["conf"] = conf
        return sample

    def prompt(self, text: str) -> torch.Tensor:
        return self.encode(text, length=self.max_src_length, append_bos=True, append_eos=True)

    def caption_samples(self, modality: str, field: str, caption: str, objects: str, index: int,
                        rng: np.random.Generator) -> List[Dict[str, Any]]:
        references = [normalize_caption(text, self.max_caption_words) for text in caption.split(REFERENCE_SEPARATOR)]
        references = [text for text in references if text]
        if not references:
            raise ValueError(f"empty caption {caption!r}")
        text = references[int(rng.integers(len(references)))] if self.shuffle else references[0]
        media = self.media_entries(modality, field, index)
        samples = [self.text_sample("caption", media, self.prompt(caption_prompt(modality)), " " + text)]
        if rng.random() < self.matching_ratio:
            wrong = self.wrong_caption(modality, text, references, row_objects(objects), index, rng)
            if wrong is not None:
                for candidate, answer in ((text, YES), (wrong, NO)):
                    source = self.prompt(caption_matching_prompt(modality, normalize_phrase(candidate)))
                    samples.append(self.text_sample("caption_matching", media, source, answer))
        return samples

    def question_samples(self, modality: str, field: str, question: str, answers: str, index: int,
                         rng: np.random.Generator) -> List[Dict[str, Any]]:
        text = normalize_question(question)
        if not text.strip(" ?"):
            raise ValueError(f"empty question {question!r}")
        confidences = answer_confidences(answers)
        if not confidences:
            raise ValueError("a question without answers (pretraining rows need them)")
        answer = max(confidences, key=confidences.get)
        media = self.media_entries(modality, field, index)
        samples = [self.text_sample("qa", media, self.prompt(" " + text), " " + answer, conf=confidences[answer])]
        if rng.random() < self.matching_ratio:
            wrong = self.wrong_answer(modality, confidences, index, rng)
            if wrong is not None:
                quoted = text.rstrip("?").strip()
                for candidate, reply in ((answer, YES), (wrong, NO)):
                    source = self.prompt(answer_matching_prompt(quoted, candidate))
                    samples.append(self.text_sample("answer_matching", media, source, reply))
        return samples

    def grounding_samples(self, field: str, text: str, box_text: str, index: int) -> List[Dict[str, Any]]:
        expression, image, _, bins = read_region(text, box_text, field, self.data_dir, self.patch_image_size,
                                                 self.num_bins, self.max_src_length)
        bin_tokens = torch.tensor(bins, dtype=torch.long) + self.first_bin
        media = self.media_entries("image", field, index, image)  # resized, never cropped: the box stays whole
        region = self.encode(REGION_CAPTION_PROMPT, append_bos=True)
        described = torch.cat([region, bin_tokens, region.new_tensor([self.eos])])
        return [self.text_sample("grounding", media, self.prompt(region_prompt(expression)), bin_tokens),
                self.text_sample("grounded_caption", media, described, " " + expression)]

    # ---- negatives --------------------------------------------------------------------------------------
    def random_rows(self, index: int, rng: np.random.Generator, kinds: Iterable[str]) -> Iterable[List[str]]:
        """Up to NEGATIVE_TRIES other rows, drawn at random, whose type is one of ``kinds`` (unreadable rows are
        passed over: they are reported when their own turn comes)."""
        kinds = set(kinds)
        if len(self) < 2:
            return
        for _ in range(NEGATIVE_TRIES):
            other = int(rng.integers(len(self) - 1))
            other += other >= index
            try:
                row = self.reader.row(other)
            except TSVFormatError:
                continue
            if len(row) >= len(COLUMNS) and row[7].strip() in kinds:
                yield row

    def wrong_caption(self, modality: str, caption: str, references: List[str], objects: List[str], index: int,
                      rng: np.random.Generator) -> Optional[str]:
        """A caption that does not describe the row's media: one of its objects swapped for another row's object
        (``object_swap_ratio`` of the time, when it names one), else another row's caption; None when the
        stream has none to give."""
        kinds = kinds_of(modality, "caption")
        if objects and rng.random() < self.object_swap_ratio:
            mentioned = [name for name in objects if re.search(rf"\b{re.escape(name)}\b", caption)]
            if mentioned:
                for row in self.random_rows(index, rng, TYPES):
                    others = [name for name in row_objects(row[5]) if name not in objects]
                    if others:
                        return swap_object(caption, mentioned, others[int(rng.integers(len(others)))])
        for row in self.random_rows(index, rng, kinds):
            candidates = [normalize_caption(text, self.max_caption_words) for text in row[2].split(REFERENCE_SEPARATOR)]
            candidates = [text for text in candidates if text and text not in references]
            if candidates:
                return candidates[int(rng.integers(len(candidates)))]
        return None

    def wrong_answer(self, modality: str, confidences: Dict[str, float], index: int,
                     rng: np.random.Generator) -> Optional[str]:
        """Another question's best answer that is none of this question's answers; None when none is found."""
        kinds = kinds_of(modality, "qa")
        for row in self.random_rows(index, rng, kinds):
            try:
                others = answer_confidences(row[4])
            except ValueError:
                continue
            others = {answer: conf for answer, conf in others.items() if answer not in confidences}
            if others:
                return max(others, key=others.get)
        return None

    # ---- batches ----------------------------------------------------------------------------------------
    def flattened(self, items: List[Optional[Dict[str, Any]]], stream: int = 0) -> List[Dict[str, Any]]:
        """The samples of the rows ``items`` (``__getitem__``'s results; None for a skipped row), tagged with the
        row's dataset index and ``stream``."""
        return [dict(sample, index=item["index"], stream=stream)
                for item in items if item is not None for sample in item["samples"]]

    def collater(self, items: List[Optional[Dict[str, Any]]]) -> Dict[str, Any]:
        skipped = sum(item is None for item in items) + replaced_rows(items)
        samples = self.flattened(items)
        if not samples:
            return stand_in_batch(self.collater([self.replacement(0)]), skipped) if items else {}
        batch = super().collater(samples)
        batch["num_skipped"] = skipped
        return batch


class UnifyMixture(StreamMixture):
    """The streams of the unify task, collated into one batch (one forward pass over every modality) whose
    ``stream_ids`` tell the criterion which stream each sample is from."""

    def collater(self, items) -> Dict[str, Any]:
        samples, skipped = [], replaced_rows([item for _, item in items])
        for stream, item in items:
            if item is None:
                skipped += 1
            else:
                samples += self.datasets[self.names[stream]].flattened([item], stream)
        if not samples:
            if not items:
                return {}
            stream = items[0][0]
            return stand_in_batch(self.collater([(stream, self.datasets[self.names[stream]].replacement(0))]), skipped)
        batch = UnivalDataset.collater(next(iter(self.datasets.values())), samples)
        batch.update(num_skipped=skipped, streams=self.names, split=self.split)
        return batch


@register_task("unify", dataclass=UnifyConfig)
class UnifyTask(AudioInput, UnivalTask):
    """Pretraining on the unify TSV format (``unival prepare pretrain`` writes it from the tasks' files).

    ``--streams image,video,audio`` reads ``<data>/image_<split>.tsv`` and so on; each training batch holds
    ``--batch-size`` rows split among the streams by ``--stream-weights``, and the loss is the sum of each stream's
    loss over its own tokens (``--criterion adjust_label_smoothed_cross_entropy`` logs each as ``loss_<stream>``).
    Validation reports the same losses; there is no generation metric.
    """

    cfg: UnifyConfig

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name in ("matching_ratio", "object_swap_ratio"):
            if not 0.0 <= getattr(self.cfg, name) <= 1.0:
                raise ValueError(f"--{name.replace('_', '-')} must be in [0, 1], got {getattr(self.cfg, name)}")
        parse_stream_weights(self.cfg.stream_weights, self.stream_names)

    @property
    def stream_names(self) -> List[str]:
        return self.parse_streams(self.cfg)

    @staticmethod
    def parse_streams(cfg: UnifyConfig) -> List[str]:
        names = [name.strip() for name in cfg.streams.split(",")]
        if not all(re.fullmatch(r"\w+", name) for name in names):
            raise ValueError(f"--streams {cfg.streams!r}: expected comma-separated names (letters, digits, _)")
        if len(set(names)) != len(names):
            raise ValueError(f"--streams {cfg.streams!r}: a stream is named twice")
        return names

    @staticmethod
    def stream_path(cfg: UnifyConfig, stream: str, split: str) -> Path:
        """``<data>/<stream>_<split>.tsv`` (``<data>/<prefix>_<stream>_<split>.tsv`` with --tsv-prefix)."""
        name = f"{cfg.tsv_prefix}_{stream}_{split}.tsv" if cfg.tsv_prefix else f"{stream}_{split}.tsv"
        path = Path(cfg.data) / name
        if not path.is_file():
            validating = split in cfg.valid_subset.split(",")
            hint = "; without validation data pass --disable-validation" if validating else ""
            raise FileNotFoundError(f"stream {stream!r}, split {split!r}: {path} not found (data folder {cfg.data}, "
                                    f"--streams {cfg.streams}){hint}")
        return path

    @classmethod
    def vocabulary_paths(cls, cfg: UnifyConfig):
        return [cls.stream_path(cfg, stream, cfg.train_subset) for stream in cls.parse_streams(cfg)]

    @classmethod
    def corpus_texts(cls, rows: Iterable[List[str]]) -> Iterable[str]:
        for modality in MEDIA:
            yield caption_prompt(modality)
        yield from (YES, NO, REGION_CAPTION_PROMPT)
        for row in rows:
            if len(row) < len(COLUMNS) or row[7].strip() not in TYPES:
                continue
            kind, modality = row[7].strip(), TYPES[row[7].strip()]
            if kind == "visual_grounding":
                expression = normalize_phrase(row[2])
                yield region_prompt(expression)
                yield " " + expression
            elif kind.endswith("qa"):
                question = normalize_question(row[3])
                yield " " + question
                try:
                    answers = answer_confidences(row[4])
                except ValueError:
                    continue  # reported, with its file and line, when the row is read
                for answer in answers:
                    yield " " + answer
                    yield answer_matching_prompt(question.rstrip("?").strip(), answer)
            else:
                for caption in row[2].split(REFERENCE_SEPARATOR):
                    yield " " + normalize_caption(caption)
                    yield caption_matching_prompt(modality, normalize_phrase(caption))

    def load_dataset(self, split: str, epoch: int = 1, combine: bool = False, task_cfg=None, evaluation: bool = False,
                     **kwargs) -> None:
        self.require_vocabulary()
        self.note_evaluation(split, task_cfg is not None or evaluation)
        training = self.is_training_split(split)
        names = self.stream_names
        weights = parse_stream_weights(self.cfg.stream_weights, names)
        datasets = {}
        for name in names:
            path = self.stream_path(self.cfg, name, split)
            reader = TSVReader(str(path), selected_cols=self.parse_columns(self.cfg))
            datasets[name] = self.build_stream(split, reader, training)
            logger.info("%s, stream %s: %d rows from %s", split, name, len(reader), path)
        self.datasets[split] = UnifyMixture(datasets, weights, seed=self.cfg.seed, shuffle=training, split=split)

    def build_stream(self, split: str, reader: TSVReader, training: bool) -> UnifyDataset:
        arguments = self.media_dataset_arguments(split, reader)
        for name in ("load_media", "media_key", "patch_type"):
            arguments.pop(name)
        return UnifyDataset(**arguments, image_transform=self.image_transform(training),
                            load_video=video_loader(self, training), load_audio=self.audio_loader(training),
                            patch_image_size=self.cfg.patch_image_size, num_bins=self.cfg.num_bins,
                            matching_ratio=self.cfg.matching_ratio, object_swap_ratio=self.cfg.object_swap_ratio,
                            max_caption_words=self.cfg.max_caption_words)
