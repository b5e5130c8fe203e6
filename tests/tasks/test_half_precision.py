"""Each image task predicts with a model cast to float16, as `fairseq-generate --fp16` and `unival evaluate --fp16`
run it on a GPU (float32 batches into a float16 model; constrained answers, bins and candidate scoring included),
and gives the float32 model's predictions on these few samples."""
import pytest
import torch

from unival.demo import TASKS
from unival.generate import build_untrained, generate_split
from unival.train import train_command


@pytest.mark.parametrize("name", ["vqa_gen", "refcoco", "snli_ve"])
def test_a_float16_model_predicts_what_the_float32_model_does(name, image_corpus, tmp_path):
    config, split, decoding = TASKS[name]
    model, task = build_untrained(train_command(config, str(image_corpus), str(tmp_path))[1:], seed=0)
    float32, references = generate_split(model, task, split, batch_size=4, **decoding)
    float16, _ = generate_split(model.half(), task, split, batch_size=4, **decoding)
    assert next(model.parameters()).dtype == torch.float16
    assert set(float16) == set(float32) == set(references) and len(references) >= 3
    assert float16 == float32
