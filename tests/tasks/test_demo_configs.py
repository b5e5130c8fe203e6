"""The demo configs on a machine with several GPUs: fairseq-train starts one process per GPU unless told otherwise,
and PyTorch's DistributedDataParallel stops at the second update when a trainable parameter got no gradient. The
demos keep to one device (their schedule and the README's figures are for one), and a demo whose task leaves
parameters unused says so to DDP for when it is spread anyway."""
import pytest

from unival.data_utils.demo_corpus import write_demo_corpus
from unival.demo import TASKS
from unival.generate import build_untrained
from unival.train import find_config, load_config, train_command


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo_configs") / "data"
    write_demo_corpus(folder, seed=8, num_images=(3, 1, 1), num_videos=(2, 1, 1), num_audios=(2, 1, 1))
    return folder


def unused_parameters(model, task) -> list:
    """Trainable parameters left without a gradient by a training forward and backward of two training rows."""
    task.load_dataset("train")
    dataset = task.dataset("train")
    sample = dataset.collater([dataset[0], dataset[1]])
    model.train()
    logits, _ = model(**sample["net_input"])
    logits.float().logsumexp(-1).mean().backward()
    return [name for name, parameter in model.named_parameters() if parameter.requires_grad and parameter.grad is None]


@pytest.mark.parametrize("name", sorted(TASKS))
def test_a_demo_keeps_to_one_device_and_names_parameters_its_task_leaves_unused(name, corpus, tmp_path):
    config = TASKS[name][0]
    options = load_config(find_config(config))
    command = train_command(config, str(corpus), str(tmp_path))
    assert " --distributed-world-size 1 " in " ".join(command) + " "
    model, task = build_untrained(command[1:], seed=0)
    unused = unused_parameters(model, task)
    if name in ("video_caption", "audio_caption"):
        assert any(key.startswith("encoder.embed_images.") for key in unused)  # the image encoder, always built
    assert bool(unused) == bool(options.get("find_unused_parameters")), unused[:5]
