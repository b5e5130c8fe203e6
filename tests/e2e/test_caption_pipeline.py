"""End to end through the real command lines: fairseq-train (with resume), fairseq-generate and
`unival evaluate` on a small demo corpus; and training must lift CIDEr far above the untrained model's."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from unival.data_utils.demo_corpus import write_demo_corpus
from unival.train import plugin_dir

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent
TRAIN_OPTIONS = [
    "--task", "caption", "--tsv-prefix", "caption", "--arch", "unival_tiny", "--patch-image-size", "64",
    "--max-src-length", "30", "--max-tgt-length", "20", "--batch-size", "16", "--optimizer", "unival_adam",
    "--lr", "1e-3", "--lr-scheduler", "polynomial_decay", "--warmup-updates", "10", "--total-num-update", "200",
    "--clip-norm", "1.0", "--criterion", "adjust_label_smoothed_cross_entropy", "--label-smoothing", "0.1",
    "--encoder-drop-path-rate", "0", "--decoder-drop-path-rate", "0", "--eval-beam", "2", "--eval-max-len", "16",
    "--num-workers", "0", "--log-format", "simple", "--log-interval", "10", "--seed", "3",
    "--best-checkpoint-metric", "cider", "--maximize-best-checkpoint-metric",
]


def run(command, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONUNBUFFERED="1")
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{command[0]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo") / "data"
    write_demo_corpus(folder, seed=5, num_images=(96, 16, 24), modalities=("image",))
    return folder


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    save_dir = tmp_path_factory.mktemp("run")
    train = [str(BIN / "fairseq-train"), str(corpus), "--user-dir", plugin_dir(), "--save-dir", str(save_dir),
             "--tensorboard-logdir", str(save_dir / "tensorboard")]
    first = run(train + TRAIN_OPTIONS + ["--max-epoch", "1"], save_dir)
    # a second call continues from checkpoint_last.pt: an interrupted run resumes where it stopped
    second = run(train + TRAIN_OPTIONS + ["--max-epoch", "3"], save_dir)
    logs = first.stderr + first.stdout, second.stderr + second.stdout
    (save_dir / "first.log").write_text(logs[0])
    (save_dir / "second.log").write_text(logs[1])
    return (save_dir,) + logs


def test_training_logs_validation_cider_and_resumes(trained):
    save_dir, first_log, second_log = trained
    assert "valid on 'valid' subset" in first_log and "| cider " in first_log
    resumed = re.search(r"Loaded checkpoint \S+checkpoint_last.pt \(epoch (\d+) @ (\d+) updates\)", second_log)
    assert resumed and int(resumed.group(2)) == 30, "96 images x 5 captions / 16 per batch = 30 updates"
    assert "| epoch 003 |" in second_log and "| epoch 001 |" not in second_log
    assert (save_dir / "checkpoint_best.pt").is_file() and (save_dir / "checkpoint_last.pt").is_file()
    assert not list(save_dir.glob("*.tmp")), "checkpoints are written through a temporary file"


def tensorboard_scalars(folder):
    """{tag: [(step, value), ...]} of the TensorBoard event files in ``folder`` (records: length, its CRC, an Event
    protobuf, its CRC)."""
    from tensorboardX.proto.event_pb2 import Event

    scalars = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data, offset = path.read_bytes(), 0
        while offset < len(data):
            length = int.from_bytes(data[offset:offset + 8], "little")
            event = Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_tensorboard_logs_training_loss_and_validation_cider(trained):
    """fairseq-train --tensorboard-logdir writes the curves (tensorboardX is a dependency: without it fairseq only
    warns), and the resumed run continues them."""
    save_dir, first_log, second_log = trained
    assert "tensorboard not found" not in first_log + second_log
    train = tensorboard_scalars(save_dir / "tensorboard" / "train_inner")
    steps = [step for step, _ in train["loss"]]
    assert steps == list(range(10, 91, 10)), "--log-interval 10 over 90 updates, the resumed run included"
    assert train["loss"][-1][1] < train["loss"][0][1] - 1.0
    valid = tensorboard_scalars(save_dir / "tensorboard" / "valid")
    assert [step for step, _ in valid["cider"]] == [30, 60, 90] and all(value >= 0 for _, value in valid["cider"])


def test_generate_and_evaluate_from_the_command_line(corpus, trained, tmp_path):
    save_dir, _, _ = trained
    result = run([str(BIN / "fairseq-generate"), str(corpus), "--user-dir", plugin_dir(), "--task", "caption",
                  "--tsv-prefix", "caption", "--patch-image-size", "64", "--path", str(save_dir / "checkpoint_best.pt"),
                  "--gen-subset", "test", "--beam", "5", "--max-len-b", "16", "--no-repeat-ngram-size", "3",
                  "--batch-size", "8"], tmp_path)
    hypotheses = [line for line in result.stdout.splitlines() if line.startswith("D-")]
    assert len(hypotheses) == 24
    assert "the model was trained with" not in result.stderr  # the data options match the training run's
    (tmp_path / "gen.out").write_text(result.stdout)
    run([str(BIN / "unival"), "evaluate", "--task", "caption", "--predictions", str(tmp_path / "gen.out"),
         "--references", str(corpus / "caption_test.tsv"), "--metrics", "BLEU", "CIDEr", "--output",
         str(tmp_path / "scores.json")], tmp_path)
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["num_predictions"] == 24
    assert 0 <= scores["scores"]["BLEU-4"] <= 1 and scores["scores"]["CIDEr"] > 0

    # the same model scored in one step: unival evaluate --checkpoint builds the task as fairseq-generate does
    run([str(BIN / "unival"), "evaluate", "--task", "caption", "--checkpoint", str(save_dir / "checkpoint_best.pt"),
         "--data", str(corpus), "--split", "test", "--metrics", "CIDEr", "--save-predictions",
         str(tmp_path / "predictions.json"), "--output", str(tmp_path / "direct.json"), "--",
         "--tsv-prefix", "caption", "--patch-image-size", "64", "--eval-beam", "5", "--eval-max-len", "16"], tmp_path)
    direct = json.loads((tmp_path / "direct.json").read_text())
    assert direct["num_predictions"] == 24 and direct["split"] == "test" and direct["ema"] is False
    assert direct["scores"]["CIDEr"] == pytest.approx(scores["scores"]["CIDEr"], abs=0.05)
    saved = json.loads((tmp_path / "predictions.json").read_text())
    assert len(saved) == 24 and set(saved[0]) == {"id", "caption"}


def test_merged_checkpoints_are_scored_and_finetuned_from_the_command_line(corpus, trained, tmp_path):
    """`unival merge` of the run's first and last epochs (weight interpolation); the merged checkpoint is one like
    any other: `unival evaluate --checkpoint` scores it and fairseq-train finetunes from it (the "fusing" recipe)."""
    save_dir, _, _ = trained
    merged = tmp_path / "merged.pt"
    run([str(BIN / "unival"), "merge", str(save_dir / "checkpoint1.pt"), str(save_dir / "checkpoint3.pt"),
         "--weights", "0.5", "--out", str(merged)], tmp_path)
    # no --patch-image-size: taken from the checkpoint's training run (64 px, not the task's default 384)
    evaluated = run([str(BIN / "unival"), "evaluate", "--task", "caption", "--checkpoint", str(merged), "--data",
                     str(corpus), "--split", "test", "--metrics", "CIDEr", "--output", str(tmp_path / "scores.json"),
                     "--", "--tsv-prefix", "caption", "--eval-beam", "2", "--eval-max-len", "16"], tmp_path)
    assert "as in the checkpoint's training run: --patch-image-size 64" in evaluated.stdout
    assert "the model was trained with" not in evaluated.stderr
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["num_predictions"] == 24 and scores["scores"]["CIDEr"] > 0
    result = run([str(BIN / "fairseq-train"), str(corpus), "--user-dir", plugin_dir(), "--save-dir",
                  str(tmp_path / "fused"), "--finetune-from-model", str(merged), "--max-update", "2",
                  "--disable-validation"] + TRAIN_OPTIONS, tmp_path)
    assert re.search(r"Loaded checkpoint \S+merged.pt \(epoch \d+ @ 0 updates\)", result.stdout + result.stderr)
    assert (tmp_path / "fused" / "checkpoint_last.pt").is_file()


def test_finetuning_refuses_a_checkpoint_of_another_vocabulary_of_the_same_size(corpus, trained, tmp_path):
    """--finetune-from-model reads no task state: a --dict-file with the training vocabulary's symbols in another
    order loaded the weights, every token row standing for another word. The model's vocabulary fingerprint
    refuses it."""
    save_dir, _, _ = trained
    start = save_dir / "checkpoint_best.pt"
    symbols = torch.load(start, map_location="cpu", weights_only=False)["task_state"]["vocabulary"]
    words = symbols[4:]
    words[0], words[1] = words[1], words[0]
    (tmp_path / "dict.txt").write_text("".join(f"{word} 1\n" for word in words))
    command = [str(BIN / "fairseq-train"), str(corpus), "--user-dir", plugin_dir(), "--save-dir",
               str(tmp_path / "run"), "--finetune-from-model", str(start), "--max-update", "1",
               "--disable-validation"] + TRAIN_OPTIONS
    env = dict(os.environ, OMP_NUM_THREADS="2")
    refused = subprocess.run(command + ["--dict-file", str(tmp_path / "dict.txt")], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=900)
    assert refused.returncode != 0
    assert (f"trained with another vocabulary of the same size ({len(symbols)} symbols"
            in refused.stdout + refused.stderr), refused.stderr[-3000:]
    assert not (tmp_path / "run" / "checkpoint_last.pt").exists()
    # the same symbols in the training order load
    (tmp_path / "dict.txt").write_text("".join(f"{word} 1\n" for word in symbols[4:]))
    run(command + ["--dict-file", str(tmp_path / "dict.txt")], tmp_path)
    assert (tmp_path / "run" / "checkpoint_last.pt").is_file()


def test_adapters_finetune_a_checkpoint_and_the_adapted_model_generates(corpus, trained, tmp_path):
    """fairseq-train --adapter-dim --decoder-prompt-length, and encoder prompts through a projection, from a trained
    model: fairseq optimises the adapters and prompts alone (its own count of trained parameters), they change and
    nothing else does; fairseq-generate builds the adapted model from its checkpoint and beam search carries the
    prompts in its cache."""
    save_dir, _, _ = trained
    start = save_dir / "checkpoint_best.pt"
    result = run([str(BIN / "fairseq-train"), str(corpus), "--user-dir", plugin_dir(), "--save-dir",
                  str(tmp_path / "adapted"), "--finetune-from-model", str(start), "--max-update", "4",
                  "--disable-validation", "--no-epoch-checkpoints"] + TRAIN_OPTIONS
                 + ["--adapter-dim", "16", "--decoder-prompt-length", "2", "--encoder-prompt-length", "2",
                    "--encoder-prompt-projection", "--encoder-prompt-dim", "8"],
                 tmp_path)
    log = result.stdout + result.stderr
    ours = re.search(r"parameters that train: (\d+) of (\d+) \([0-9.]+%\); only adapters, prompts", log)
    fairseqs = re.search(r"num\. trained: ([\d,]+)\)", log)
    assert ours and fairseqs, log[-3000:]
    adapters, prompts = 2 * 2 * (2 * 256 * 16 + 16 + 256), 2 * 2 * 2 * 256  # 2 + 2 layers; 2 decoder layers
    projection = 2 * 256 + (256 * 8 + 8) + (8 * 2 * 2 * 256 + 2 * 2 * 256)  # table, MLP to 2 layers' keys and values
    assert int(fairseqs.group(1).replace(",", "")) == int(ours.group(1)) == adapters + prompts + projection
    assert "the checkpoint has no adapters" in log and "the checkpoint has no decoder prompts" in log
    assert "the checkpoint has no encoder prompt projection weights" in log
    before = torch.load(start, map_location="cpu", weights_only=False)["model"]
    after = torch.load(tmp_path / "adapted" / "checkpoint_last.pt", map_location="cpu", weights_only=False)["model"]
    added = {key for key in after if ".adapter." in key or key.endswith(".prompt") or ".prompt_projection." in key}
    assert set(after) - set(before) == added and len(added) == 4 * 4 + 2 + 5
    assert all(torch.equal(after[key], value) for key, value in before.items()), "only adapters and prompts change"
    assert all(after[key].abs().sum() > 0 for key in after if key.endswith("adapter.up.weight"))

    generated = run([str(BIN / "fairseq-generate"), str(corpus), "--user-dir", plugin_dir(), "--task", "caption",
                     "--tsv-prefix", "caption", "--patch-image-size", "64", "--path",
                     str(tmp_path / "adapted" / "checkpoint_last.pt"), "--gen-subset", "test", "--beam", "2",
                     "--max-len-b", "16", "--batch-size", "8"], tmp_path)
    assert len([line for line in generated.stdout.splitlines() if line.startswith("D-")]) == 24


def test_half_precision_prediction_from_the_command_line(corpus, trained, tmp_path):
    """fairseq-generate --fp16 casts the model to float16 and hands it float32 images; `unival evaluate --bf16`
    predicts with a bfloat16 model. Both mostly agree with float32 (on a GPU the same code runs, faster)."""
    save_dir, _, _ = trained
    generate = [str(BIN / "fairseq-generate"), str(corpus), "--user-dir", plugin_dir(), "--task", "caption",
                "--tsv-prefix", "caption", "--patch-image-size", "64", "--path", str(save_dir / "checkpoint_best.pt"),
                "--gen-subset", "test", "--beam", "2", "--max-len-b", "16", "--batch-size", "8", "--cpu"]

    def captions(output):
        return dict(line.split("\t")[::2] for line in output.splitlines() if line.startswith("D-"))

    float32, float16 = captions(run(generate, tmp_path).stdout), captions(run(generate + ["--fp16"], tmp_path).stdout)
    assert len(float32) == len(float16) == 24
    assert sum(float16[key] == caption for key, caption in float32.items()) >= 18, (float32, float16)

    scores = {}
    for precision in ([], ["--bf16"]):
        output = tmp_path / f"scores{''.join(precision)}.json"
        result = run([str(BIN / "unival"), "evaluate", "--task", "caption", "--checkpoint",
                      str(save_dir / "checkpoint_best.pt"), "--data", str(corpus), "--split", "test", "--cpu",
                      *precision, "--metrics", "CIDEr", "--output", str(output), "--", "--tsv-prefix", "caption",
                      "--patch-image-size", "64", "--eval-beam", "2", "--eval-max-len", "16"], tmp_path)
        scores[tuple(precision)] = json.loads(output.read_text())["scores"]["CIDEr"]
    assert "--bf16 on the CPU" in result.stderr
    assert scores[("--bf16",)] == pytest.approx(scores[()], abs=0.2) and scores[()] > 0.3, scores


def test_training_lifts_cider_far_above_the_untrained_model(corpus, trained):
    from unival.generate import build_untrained, generate_split, load_trained
    from unival.metrics import score_captions

    save_dir, _, _ = trained
    argv = [str(corpus), "--user-dir", plugin_dir()] + TRAIN_OPTIONS
    untrained, task = build_untrained(argv)
    before = score_captions(*generate_split(untrained, task, "test", eval_beam=2, eval_max_len=16), metrics=("CIDEr",))
    model, task = load_trained(str(save_dir / "checkpoint_best.pt"), {"patch_image_size": 64})
    after = score_captions(*generate_split(model, task, "test", eval_beam=2, eval_max_len=16), metrics=("CIDEr",))
    assert before.scores["CIDEr"] < 0.1
    assert after.scores["CIDEr"] > 0.5, after.scores


def test_bfloat16_autocast_training_from_the_command_line(corpus, tmp_path):
    """--autocast-bf16 reaches the task through fairseq-train and trains: the loss falls as in float32. On a CPU
    without bfloat16 instructions it is refused unless --allow-emulated-bf16, and then runs only a few updates
    (emulated bfloat16 is tens of times slower; tests/tasks/test_autocast.py checks the learning on any CPU)."""
    from unival.tasks.base import native_bfloat16_cpu

    train = [str(BIN / "fairseq-train"), str(corpus), "--user-dir", plugin_dir(), "--save-dir", str(tmp_path),
             "--disable-validation", "--no-save", "--cpu"] + TRAIN_OPTIONS
    env = dict(os.environ, OMP_NUM_THREADS="2")
    emulated = native_bfloat16_cpu() is False
    if emulated:
        refused = subprocess.run(train + ["--max-update", "2", "--autocast-bf16"], cwd=tmp_path, capture_output=True,
                                 text=True, env=env, timeout=900)
        assert refused.returncode != 0
        assert "--autocast-bf16: this CPU has no bfloat16 instructions" in refused.stderr
        assert "--allow-emulated-bf16" in refused.stderr and "train_inner" not in refused.stderr + refused.stdout
        result = run(train + ["--autocast-bf16", "--allow-emulated-bf16", "--max-update", "4", "--log-interval",
                              "2"], tmp_path)
    else:
        result = run(train + ["--autocast-bf16", "--max-update", "20"], tmp_path)
    log = result.stderr + result.stdout
    assert "'autocast_bf16': True" in log
    losses = [float(value) for value in re.findall(r"train_inner \| .*? loss=([\d.]+)", log)]
    assert len(losses) == 2 and all(0 < loss < 20 for loss in losses), losses
    if emulated:
        assert "bfloat16 is emulated" in log
    else:
        assert losses[1] < 0.8 * losses[0], losses
    refused = subprocess.run(train + ["--max-update", "2", "--autocast-bf16", "--allow-emulated-bf16", "--amp"],
                             cwd=tmp_path, capture_output=True, text=True, env=env, timeout=900)
    assert refused.returncode != 0 and "cannot be combined with --fp16, --bf16 or --amp" in refused.stderr


def test_generate_names_a_different_vocabulary_and_image_size(corpus, trained, tmp_path, gpt2_bpe_dir):
    save_dir, _, _ = trained
    generate = [str(BIN / "fairseq-generate"), str(corpus), "--user-dir", plugin_dir(), "--task", "caption",
                "--tsv-prefix", "caption", "--path", str(save_dir / "checkpoint_best.pt"), "--gen-subset", "test",
                "--beam", "1", "--max-len-b", "4", "--batch-size", "8"]
    env = dict(os.environ, OMP_NUM_THREADS="2")
    other_vocabulary = subprocess.run(generate + ["--patch-image-size", "64", "--dict-file",
                                                  str(gpt2_bpe_dir / "dict.txt"), "--bpe-dir", str(gpt2_bpe_dir)],
                                      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    # the checkpoint stores the vocabulary it was trained with: that one is used, and the other one named
    assert other_vocabulary.returncode == 0, other_vocabulary.stderr[-3000:]
    assert re.search(r"--dict-file \S+dict.txt differs from the vocabulary the model was trained with, which the "
                     r"checkpoint holds \(\d+ and \d+ symbols; id 4 is '13' in one, '\d+' in the other\): the "
                     r"model's is used", other_vocabulary.stderr)
    assert len([line for line in other_vocabulary.stdout.splitlines() if line.startswith("D-")]) == 24
    # trained at 64 px, generated at the default 384: warned (the run then stops: the grid exceeds the position buckets)
    other_size = subprocess.run(generate, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert "trained with --patch-image-size 64 but this run uses --patch-image-size" in other_size.stderr
    # unival evaluate --checkpoint compares the options it is given with the checkpoint's too (those not given it
    # takes from the checkpoint)
    evaluate = subprocess.run([str(BIN / "unival"), "evaluate", "--task", "caption", "--checkpoint",
                               str(save_dir / "checkpoint_best.pt"), "--data", str(corpus), "--split", "test",
                               "--cpu", "--", "--tsv-prefix", "caption", "--eval-max-len", "4",
                               "--patch-image-size", "96"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert "trained with --patch-image-size 64 but this run uses --patch-image-size 96" in evaluate.stderr
    assert "as in the checkpoint's training run" not in evaluate.stdout


def test_a_model_trained_without_dict_file_is_evaluated_without_its_training_split(corpus, trained, tmp_path):
    """The vocabulary built from the training split is stored in the checkpoint: fairseq-generate and unival evaluate
    use it where only the test split is (a copy of the model and its test data on another machine)."""
    save_dir, _, _ = trained
    test_only = tmp_path / "test_only"
    test_only.mkdir()
    (test_only / "caption_test.tsv").write_bytes((corpus / "caption_test.tsv").read_bytes())
    outputs = []
    for folder in (corpus, test_only):
        result = run([str(BIN / "fairseq-generate"), str(folder), "--user-dir", plugin_dir(), "--task", "caption",
                      "--tsv-prefix", "caption", "--patch-image-size", "64", "--path",
                      str(save_dir / "checkpoint_best.pt"), "--gen-subset", "test", "--beam", "1", "--max-len-b", "8",
                      "--batch-size", "8"], tmp_path)
        outputs.append(sorted(line for line in result.stdout.splitlines() if line.startswith(("H-", "D-"))))
    assert len(outputs[0]) == 48 and outputs[1] == outputs[0]
    assert "the vocabulary must come from the checkpoint" in result.stderr
    run([str(BIN / "unival"), "evaluate", "--task", "caption", "--checkpoint", str(save_dir / "checkpoint_best.pt"),
         "--data", str(test_only), "--split", "test", "--metrics", "CIDEr", "--output", str(tmp_path / "scores.json"),
         "--", "--tsv-prefix", "caption", "--eval-beam", "1", "--eval-max-len", "8"], tmp_path)
    assert json.loads((tmp_path / "scores.json").read_text())["num_predictions"] == 24


def test_training_with_mostly_bad_rows_skips_and_counts_them(tmp_path):
    """--skip-bad-rows through fairseq-train where whole batches are bad (a wrong --media-dir, say): training
    batches are filled with good rows, validation counts an all-bad batch; before, fairseq stopped on "Invalid
    dummy batch: {}" or took dummy updates and lost the counts."""
    data = tmp_path / "data"
    write_demo_corpus(data, seed=6, num_images=(4, 4, 2), modalities=("image",))
    for split, bad in (("train", 16), ("valid", 2)):
        path = data / f"caption_{split}.tsv"
        rows = [line.split("\t") for line in path.read_text().splitlines()]
        for row in rows[:bad]:
            row[-1] = "bm90IGFuIGltYWdl"  # base64 of "not an image"
        path.write_text("".join("\t".join(row) + "\n" for row in rows))
    result = run([str(BIN / "fairseq-train"), str(data), "--user-dir", plugin_dir(), "--save-dir",
                  str(tmp_path / "run"), *TRAIN_OPTIONS, "--no-save", "--skip-bad-rows", "--batch-size", "2",
                  "--batch-size-valid", "2", "--max-epoch", "1", "--eval-beam", "1", "--eval-max-len", "4"], tmp_path)
    log = result.stdout + result.stderr
    train = re.search(r"\| train \| epoch 001 \|.*", log).group(0)
    valid = re.search(r"\| valid \| epoch 001 \|.*", log).group(0)
    assert "| num_updates 10 |" in train, "20 rows (4 good) in batches of 2: 10 updates, none a dummy"
    assert "| skipped_rows 16 |" in train and "| bsz 2 |" in train
    assert "| skipped_rows 2 |" in valid and "| cider " in valid  # one batch of bad rows, one of good ones


@pytest.mark.parametrize("choice", ["auto", "glibc"])
def test_unival_train_runs_fairseq_train_under_the_chosen_allocator(corpus, tmp_path, choice):
    """`unival train` (what the run scripts call) starts fairseq-train with --malloc's allocator preloaded (auto:
    tcmalloc or jemalloc where installed); its data-loading worker inherits it. Under glibc's malloc the task keeps
    freed memory instead."""
    from unival import allocator

    chosen, library = allocator.resolve(choice)
    result = run([str(BIN / "unival"), "train", "caption/demo", "--data", str(corpus), "--save-dir",
                  str(tmp_path / "run"), "--malloc", choice, "--", "--patch-image-size", "64", "--max-update", "4",
                  "--num-workers", "1", "--disable-validation", "--no-save"], tmp_path)
    log = result.stdout + result.stderr
    assert "done training" in log and "num_updates 4" in log
    if library:
        assert f"[unival] memory allocator: {chosen} ({library})" in log
        assert f"{chosen} serves memory allocations" in log  # the fairseq-train process reports it
    else:
        assert "[unival] memory allocator: glibc's malloc" in log
        assert "freed memory stays in the process for reuse" in log


def test_ema_training_from_the_command_line(corpus, tmp_path):
    """--store-ema (the VQA and video-QA finetuning configs) trains, validates through the EMA model (vqa_gen's
    valid_step gets it) and stores EMA weights that load. fairseq's own EMA failed the first update on the image
    encoder's integer BatchNorm counters."""
    from unival import load_checkpoint

    save_dir = tmp_path / "run"
    result = run([str(BIN / "unival"), "train", "vqa_gen/demo", "--data", str(corpus), "--save-dir", str(save_dir),
                  "--", "--max-update", "6", "--num-workers", "0", "--store-ema", "--ema-decay", "0.5", "--ema-fp32",
                  "--validate-interval-updates", "6", "--eval-beam", "2"], tmp_path)
    log = result.stdout + result.stderr
    assert "num_updates 6" in log and "ema_decay" in log and "| vqa_score " in log
    weights = load_checkpoint(save_dir / "checkpoint_last.pt").state_dict()
    averaged = load_checkpoint(save_dir / "checkpoint_last.pt", ema=True).state_dict()
    name = "encoder.layers.0.fc1.weight"
    assert not torch.equal(weights[name], averaged[name])  # half of each update lags behind in the average
    counter = "encoder.embed_images.bn1.num_batches_tracked"
    assert averaged[counter].item() == weights[counter].item() == 6  # copied, not averaged
