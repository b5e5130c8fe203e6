"""unival.generate.generate_split, the in-process prediction of a split (evaluate --checkpoint, demo, Python API)."""
from types import SimpleNamespace

import torch

from unival import generate


class TwoSampleTask:
    """Just enough of a task: one batch of two samples, whose predictions record the batch's device."""

    class Config:
        eval_beam = 5

    cfg = Config()

    def adopt_model(self, model):
        self.model = model

    def load_dataset(self, split, evaluation=False):
        self.split, self.evaluation = split, evaluation

    def dataset(self, split):
        return [0, 1]

    def get_batch_iterator(self, **kwargs):
        batch = {"uniq_ids": ["a", "b"], "references": ["ref a", "ref b"], "net_input": {"x": torch.zeros(2)}}

        class Iterator:
            def next_epoch_itr(self, shuffle):
                return iter([batch, {}])  # fairseq hands over empty dummy batches too
        return Iterator()

    def predict(self, model, sample):
        return [sample["moved_to"]] * 2


class ModelOnSecondGpu:
    def parameters(self):
        return iter([SimpleNamespace(device=torch.device("cuda", 1))])


def test_batches_go_to_the_models_own_gpu(monkeypatch):
    # a model on cuda:1 must get its batches there, not on the current device (cuda:0)
    monkeypatch.setattr(generate.utils, "move_to_cuda", lambda sample, device=None: {**sample, "moved_to": device})
    predictions, references = generate.generate_split(ModelOnSecondGpu(), TwoSampleTask(), "test", eval_beam=2)
    assert predictions == {"a": torch.device("cuda", 1), "b": torch.device("cuda", 1)}
    assert references == {"a": "ref a", "b": "ref b"}
    assert TwoSampleTask.cfg.eval_beam == 5  # the override lasted for the call only
