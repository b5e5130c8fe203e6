"""The original UnIVAL checkpoint through fairseq's own loading path: `fairseq-generate --path` must decode
exactly what `unival.load_checkpoint` + the same task and generator decode."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import unival
from unival.generate import generate_split
from unival.tasks.caption import CaptionConfig, CaptionTask
from unival.train import plugin_dir

pytestmark = [pytest.mark.e2e, pytest.mark.parity]


@pytest.fixture(scope="module")
def data(fixtures_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("original")
    # the reference model's vocabulary: BART's first 1000 BPE symbols, 1024 codes, 1000 bins
    lines = (fixtures_dir / "gpt2_bpe" / "dict.txt").read_text().splitlines()[:1000]
    (folder / "dict.txt").write_text("\n".join(lines) + "\n")
    (folder / "images").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for index in range(4):
        pixels = rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / "images" / f"{index}.png")
        rows.append(f"{index}\t{index}\tthe image {index}\t\timages/{index}.png\n")
    for split in ("train", "test"):
        (folder / f"caption_{split}.tsv").write_text("".join(rows))
    return folder


OPTIONS = ["--task", "caption", "--tsv-prefix", "caption", "--patch-image-size", "256", "--code-dict-size", "1024",
           "--num-bins", "1000"]


def test_fairseq_generate_on_the_original_checkpoint(fixtures_dir, data, tmp_path):
    checkpoint = fixtures_dir / "unival_reference" / "checkpoint.pt"
    command = [str(Path(sys.executable).parent / "fairseq-generate"), str(data), "--user-dir", plugin_dir(),
               "--dict-file", str(data / "dict.txt"), "--path", str(checkpoint), "--gen-subset", "test",
               "--beam", "5", "--max-len-b", "10", "--batch-size", "4"] + OPTIONS
    result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, OMP_NUM_THREADS="2"))
    assert result.returncode == 0, result.stderr[-3000:]
    from_cli = {}
    for line in result.stdout.splitlines():
        if line.startswith("D-"):
            index, _, text = line[2:].split("\t")
            from_cli[index] = text.strip()
    assert len(from_cli) == 4

    task = CaptionTask.setup_task(CaptionConfig(
        data=str(data), tsv_prefix="caption", patch_image_size=256, code_dict_size=1024, num_bins=1000,
        dict_file=str(data / "dict.txt"), train_subset="train", valid_subset="test", seed=1, eval_cider=False))
    model = unival.load_checkpoint(checkpoint, dictionary=task.dictionary)
    predictions, _ = generate_split(model, task, "test", batch_size=4, eval_beam=5, eval_max_len=10,
                                    eval_no_repeat_ngram_size=0)
    assert from_cli == predictions
    assert any(text for text in predictions.values()), "the reference model decodes real tokens"


@pytest.mark.parametrize("ema", [False, True], ids=["plain", "store-ema"])
def test_fairseq_train_restores_the_original_checkpoint(fixtures_dir, data, tmp_path, ema):
    """--restore-file with the original's checkpoint: the model built from this project's options of the same
    architecture takes every weight (an update with a negligible learning rate leaves its parameters in place).
    With --store-ema (the VQA configs) the average starts from those weights, as the checkpoint holds no EMA:
    fairseq itself stopped there with KeyError: 'model'."""
    folder = fixtures_dir / "unival_reference"
    architecture = ["--arch", "unival_base", "--encoder-layers", "2", "--decoder-layers", "2",
                    "--encoder-embed-dim", "256", "--decoder-embed-dim", "256", "--encoder-ffn-embed-dim", "1024",
                    "--decoder-ffn-embed-dim", "1024", "--encoder-attention-heads", "4",
                    "--decoder-attention-heads", "4", "--image-bucket-size", "16", "--image-encoder", "resnet50",
                    "--image-encoder-stages", "3", "--code-layernorm-embedding"]
    command = [str(Path(sys.executable).parent / "fairseq-train"), str(data), "--user-dir", plugin_dir(),
               "--dict-file", str(data / "dict.txt"), "--save-dir", str(tmp_path), "--valid-subset", "test",
               "--restore-file", str(folder / "checkpoint.pt"), "--reset-optimizer", "--reset-dataloader",
               "--reset-meters", "--reset-lr-scheduler", "--max-update", "1", "--batch-size", "4",
               "--optimizer", "adam", "--lr", "1e-12", "--criterion", "adjust_label_smoothed_cross_entropy",
               "--no-epoch-checkpoints", "--disable-validation", "--num-workers", "0", "--eval-cider", "False"
               ] + OPTIONS + architecture
    command.remove("--eval-cider")
    command.remove("False")
    if ema:
        command += ["--store-ema", "--ema-decay", "0.5", "--ema-fp32"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, OMP_NUM_THREADS="2"))
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "Loaded checkpoint" in result.stdout + result.stderr
    restored = dict(unival.load_checkpoint(tmp_path / "checkpoint_last.pt").named_parameters())
    original = dict(unival.load_checkpoint(folder / "checkpoint.pt").named_parameters())
    assert restored.keys() == original.keys()
    # parameters moved by at most one Adam step of 1e-12 (BatchNorm running statistics do move in training)
    assert max(float((restored[key] - original[key]).abs().max()) for key in original) < 1e-6
    if ema:
        assert "holds no EMA weights: --store-ema starts its average from the checkpoint's model weights" in (
            result.stdout + result.stderr)
        averaged = dict(unival.load_checkpoint(tmp_path / "checkpoint_last.pt", ema=True).named_parameters())
        assert averaged.keys() == original.keys()
        assert max(float((averaged[key] - original[key]).abs().max()) for key in original) < 1e-6
