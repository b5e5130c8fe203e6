"""In-process generation for a split: the same task, batching and ``inference_step`` that
``fairseq-generate`` uses, returning predictions by sample id (for the demo and the Python API)."""
import logging
from typing import Dict, List, Optional, Tuple

import torch
from fairseq import checkpoint_utils, options, tasks, utils
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.sequence_generator import SequenceGenerator


logger = logging.getLogger(__name__)


def config_from_train_args(argv: List[str]):
    """The fairseq config that ``fairseq-train argv`` would run with."""
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, input_args=argv)
    return convert_namespace_to_omegaconf(args)


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


def generate_split(model, task, split: str, beam: int = 5, max_len: int = 22, no_repeat_ngram_size: int = 3,
                   batch_size: int = 16) -> Tuple[Dict[str, str], Dict[str, List[str]]]:
    """Decodes every sample of ``split``: returns (predictions, references), both keyed by sample id."""
    task.load_dataset(split)
    dataset = task.dataset(split)
    generator = SequenceGenerator([model], task.target_dictionary, beam_size=beam, max_len_a=0,
                                  max_len_b=max_len, no_repeat_ngram_size=no_repeat_ngram_size)
    iterator = task.get_batch_iterator(dataset=dataset, max_sentences=batch_size, num_workers=0,
                                       max_positions=None).next_epoch_itr(shuffle=False)
    predictions, references = {}, {}
    for sample in iterator:
        if not sample:
            continue
        hypotheses = task.inference_step(generator, [model], sample)
        for row, hypos in enumerate(hypotheses):
            sample_id = str(sample["uniq_ids"][row])
            predictions[sample_id] = task.decode(hypos[0]["tokens"])
            references[sample_id] = sample["references"][row]
    return predictions, references
