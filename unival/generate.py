"""In-process prediction for a split: the same task and batching that ``fairseq-generate`` uses, returning each
task's predictions and references by sample id (for the demo, ``unival evaluate --checkpoint`` and the Python API)."""
import logging
import warnings
from contextlib import contextmanager
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from fairseq import checkpoint_utils, options, tasks, utils
from fairseq.dataclass import utils as dataclass_utils


logger = logging.getLogger(__name__)


def convert_namespace_to_omegaconf(args):
    """fairseq's conversion of parsed arguments to its config, without the six deprecation warnings (twenty lines)
    that fairseq's use of Hydra's old API prints at each call: they say nothing about the user's options."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"hydra\.")
        warnings.filterwarnings("ignore", message=r"(?s).*(is no longer experimental|version_base parameter is not "
                                                  r"specified|deprecated keyword in package header|validated against "
                                                  r"ConfigStore schema|strict flag in the compose API)")
        return dataclass_utils.convert_namespace_to_omegaconf(args)


def config_from_train_args(argv: List[str]):
    """The fairseq config that ``fairseq-train argv`` would run with."""
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, input_args=argv)
    return convert_namespace_to_omegaconf(args)


def build_task(name: str, data: str, argv: Sequence[str] = ()):
    """The task ``name`` on ``data`` with the task options of ``argv`` (``["--dict-file", ...]``), as
    ``fairseq-generate DATA --task NAME --user-dir <unival> argv`` would set it up."""
    from unival.train import plugin_dir

    parser = options.get_generation_parser(default_task=name)
    try:
        args = options.parse_args_and_arch(parser, input_args=[data, "--task", name, "--user-dir", plugin_dir(),
                                                                *argv])
    except SystemExit as err:  # argparse has printed why; a library call must not end the program
        raise ValueError(f"the options of task {name!r} were refused (see the message above): {list(argv)}") from err
    cfg = convert_namespace_to_omegaconf(args)
    return tasks.setup_task(cfg.task)


def build_untrained(argv: List[str], seed: Optional[int] = None):
    """(model, task) as ``fairseq-train argv`` would initialise them, before any update."""
    cfg = config_from_train_args(argv)
    utils.import_user_module(cfg.common)
    task = tasks.setup_task(cfg.task)
    torch.manual_seed(cfg.common.seed if seed is None else seed)
    model = task.build_model(cfg.model)
    return model.eval(), task


def load_trained(path: str, overrides: Optional[Dict] = None):
    """(model, task) from a checkpoint written by fairseq-train with this plugin (registered on import)."""
    models, _, task = checkpoint_utils.load_model_ensemble_and_task([path], arg_overrides=overrides or {})
    return models[0].eval(), task


@contextmanager
def overridden(cfg, **values):
    """``cfg`` with ``values`` (those not None) in place for the duration of the block."""
    values = {key: value for key, value in values.items() if value is not None}
    saved = {key: getattr(cfg, key) for key in values}
    for key, value in values.items():
        setattr(cfg, key, value)
    try:
        yield cfg
    finally:
        for key, value in saved.items():
            setattr(cfg, key, value)


def generate_split(model, task, split: str, batch_size: int = 16,
                   **options) -> Tuple[Dict[str, object], Dict[str, object]]:
    """Predicts every sample of ``split`` with ``task.predict``: returns (predictions, references), both keyed by
    sample id. ``options`` override the task's own for this call (``eval_beam=5, eval_max_len=16``). A model built
    with its vocabulary (``unival.load_checkpoint`` of a checkpoint that stores it) gives it to the task."""
    from unival.checkpoint import is_placeholder

    vocabulary = getattr(getattr(model, "encoder", None), "dictionary", None)
    own = getattr(task, "target_dictionary", None)
    if vocabulary is not None and own is not None:
        if len(vocabulary) != len(own):
            raise ValueError(f"the model's vocabulary has {len(vocabulary)} symbols but the task's has {len(own)}: "
                             f"give the task the --dict-file the model was trained with")
        if not is_placeholder(vocabulary):
            task.adopt_vocabulary(vocabulary, "the model")
    task.adopt_model(model)
    task.load_dataset(split, evaluation=True)
    dataset = task.dataset(split)
    batches = task.get_batch_iterator(dataset=dataset, max_sentences=batch_size, num_workers=0, max_positions=None)
    with warnings.catch_warnings():
        # fairseq's data loader always asks for pinned memory; without a GPU torch warns that it has none
        warnings.filterwarnings("ignore", message="'pin_memory' argument is set as true but no accelerator")
        iterator = batches.next_epoch_itr(shuffle=False)
    predictions, references = {}, {}
    device = next(model.parameters()).device
    with overridden(task.cfg, **options), torch.no_grad():
        for sample in iterator:
            if "net_input" not in sample:  # fairseq's empty batch, or one whose rows were all bad
                continue
            if device.type == "cuda":
                sample = utils.move_to_cuda(sample, device=device)  # the model's GPU, not the current one
            for row, prediction in enumerate(task.predict(model, sample)):
                sample_id = str(sample["uniq_ids"][row])
                predictions[sample_id] = prediction
                references[sample_id] = sample["references"][row]
    return predictions, references
