"""Compatibility of fairseq 0.12 with torch 2.14 that the whole plugin needs before fairseq loads anything.

torch >= 2.6 loads checkpoints with ``weights_only=True``; fairseq's and the original UnIVAL's checkpoints
hold a few plain Python containers besides tensors. We allow exactly those types, never the unsafe path.
fairseq's EMA (``--store-ema``) is built so that it copies integer state instead of failing on it, and starts
from the model's weights when training from a checkpoint that holds none. Bias-free layers are not reported as
shared parameters.
"""
import argparse
import collections
import functools
import logging
import warnings

import numpy as np
import torch

logger = logging.getLogger(__name__)

SAFE_CHECKPOINT_TYPES = [
    argparse.Namespace,
    collections.OrderedDict,
    collections.defaultdict,
    np.dtype,
    np.dtypes.Float64DType,
    np.dtypes.Float32DType,
    np.dtypes.Int64DType,
    np._core.multiarray.scalar,  # how numpy pickles scalars such as a best validation loss
]


def allow_checkpoint_types() -> None:
    """Adds the containers found in fairseq and UnIVAL checkpoints to torch's weights-only allowlist."""
    torch.serialization.add_safe_globals(SAFE_CHECKPOINT_TYPES)


allow_checkpoint_types()


def restore_log_level() -> None:
    """fairseq's wav2vec2_classification module sets the root logger to DEBUG when imported, which floods
    training logs with PIL's chunk-by-chunk PNG messages; put the level fairseq's CLIs ask for back."""
    import os

    wanted = getattr(logging, os.environ.get("LOGLEVEL", "INFO").upper(), logging.INFO)
    if logging.root.level < wanted:
        logging.root.setLevel(wanted)


with warnings.catch_warnings():
    # fairseq decorates a function with torch.jit.script at import, which torch 2.14 warns is deprecated: a line
    # of noise at the start of every `unival` command that says nothing about the user's code (fairseq-train
    # imports fairseq before any plugin, so it still prints it)
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)
    import fairseq.models  # noqa: E402  (the import that changes the log level)

restore_log_level()


from fairseq.models.ema import EMA  # noqa: E402  (after the import above)


class StepCopyingEMA(EMA):
    """fairseq's EMA restores its model through the model's ``load_state_dict`` after every update, which runs
    the checks meant for checkpoints (``upgrade_state_dict_named``: vocabulary, derived buffers, modality and
    adapter weights; reading a GPU value there would wait for the GPU at every update). An update's entries
    come from the model itself: they are copied as they are. Checkpoints' EMA weights are still checked."""
    _updating = False

    def _step_internal(self, new_model, updates=None):
        self._updating = True
        try:
            super()._step_internal(new_model, updates)
        finally:
            self._updating = False

    def restore(self, state_dict, build_fp32_params=False):
        if not self._updating:
            super().restore(state_dict, build_fp32_params)
            return
        torch.nn.Module.load_state_dict(self.model, state_dict, strict=False)
        if build_fp32_params:
            self.build_fp32_params(state_dict)


def build_ema_copying_integer_state(model, cfg, device):
    """fairseq's EMA of ``model`` (``--store-ema``) that copies the integer entries of its state instead of
    averaging them. fairseq's multiplies every entry by the decay in place, and an integer one, such as the
    BatchNorm counters ``num_batches_tracked`` of the image and video encoders, fails the first update ("result
    type Float can't be cast to the desired output type Long"). Floating-point entries are averaged as before.
    Its update copies the average into its model without the checks of loading a checkpoint (see
    ``StepCopyingEMA``)."""
    integer_state = {name for name, value in model.state_dict().items()
                     if torch.is_tensor(value) and not torch.is_floating_point(value)}
    return StepCopyingEMA(model, cfg, device, skip_keys=integer_state)


import fairseq.trainer  # noqa: E402

fairseq.trainer.build_ema = build_ema_copying_integer_state


def ema_from_model_when_missing(load_checkpoint):
    """fairseq's ``Trainer.load_checkpoint``, made to start ``--store-ema``'s average from the checkpoint's model
    weights when the checkpoint holds no EMA (a pretrained UnIVAL checkpoint given to ``--finetune-from-model`` or
    ``--restore-file``, as the VQA and video-QA finetuning configs do). fairseq means to, but reads the model
    weights after deleting them and stops with ``KeyError: 'model'``. The checkpoint's model weights are offered
    as its EMA weights while it is read, which is the state fairseq's own fallback would restore."""
    @functools.wraps(load_checkpoint)
    def load(self, filename, *args, **kwargs):
        if not self.cfg.ema.store_ema:
            return load_checkpoint(self, filename, *args, **kwargs)
        read = fairseq.checkpoint_utils.load_checkpoint_to_cpu

        def read_offering_model_as_ema(*read_args, **read_kwargs):
            state = read(*read_args, **read_kwargs)
            extra = state.get("extra_state")
            if extra is not None and "ema" not in extra:
                logger.info("%s holds no EMA weights: --store-ema starts its average from the checkpoint's model "
                            "weights", filename)
                extra["ema"] = state["model"]
            return state

        fairseq.checkpoint_utils.load_checkpoint_to_cpu = read_offering_model_as_ema
        try:
            return load_checkpoint(self, filename, *args, **kwargs)
        finally:
            fairseq.checkpoint_utils.load_checkpoint_to_cpu = read

    return load


import fairseq.checkpoint_utils  # noqa: E402

fairseq.trainer.Trainer.load_checkpoint = ema_from_model_when_missing(fairseq.trainer.Trainer.load_checkpoint)


def catalog_present_shared_params(catalog):
    """fairseq's catalogue of parameters shared between modules, less the absent ones: it grouped every ``None``
    entry of ``_parameters`` (a convolution built with ``bias=False``) as one shared parameter, and fairseq-train
    logged about a hundred "detected shared parameter: encoder.embed_images.conv1.bias <- ...embed_audios..." lines,
    as if the image and audio encoders were tied. Truly shared parameters (tied embeddings) are still found."""
    @functools.wraps(catalog)
    def present(module, memo=None, prefix=""):
        shared = catalog(module, memo, prefix)
        if shared is None:  # a recursive call: only the outermost returns the list
            return None
        return [paths for paths in shared if fairseq.trainer._get_module_by_path(module, paths[0]) is not None]

    return present


fairseq.trainer._catalog_shared_params = catalog_present_shared_params(fairseq.trainer._catalog_shared_params)
