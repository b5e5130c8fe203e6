"""The pretraining curriculum from its run script, at toy scale on the CPU: demo corpus -> `unival prepare pretrain`
streams -> stage 1 (image) learns -> stage 2 adds the video stream and a video encoder, starting from stage 1."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from unival.cli import main as cli_main
from unival.data_utils.demo_corpus import write_demo_corpus

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "run_scripts" / "pretrain" / "train.sh"
DICT_FILE = REPO.parent / "shared" / "fixtures" / "gpt2_bpe" / "dict.txt"
UNIVAL = Path(sys.executable).with_name("unival")
# the pretraining recipe names ResNet-101: the tiny model's ResNet-18 instead; weights only and no epoch checkpoints
# (each stage starts from the previous one's weights) keep a stage's files at 0.2 GB rather than 2.2 GB
TINY = ["--arch", "unival_tiny", "--image-encoder", "resnet18", "--patch-image-size", "64", "--batch-size", "6",
        "--num-workers", "0", "--max-src-length", "40", "--max-tgt-length", "16", "--log-interval", "1",
        "--warmup-updates", "1", "--no-save-optimizer-state", "--no-epoch-checkpoints"]

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(not DICT_FILE.is_file(), reason=f"BART's dict.txt fixture not found at {DICT_FILE} "
                                                                  "(../shared beside the checkout)")]


def run_script(env, *args, timeout=600, succeeds=True):
    full_env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), "NUM_GPUS": "0",
                "UNIVAL_CMD": str(UNIVAL), "OMP_NUM_THREADS": "2", **env}
    result = subprocess.run(["bash", str(SCRIPT), *args], env=full_env, capture_output=True, text=True,
                            timeout=timeout)
    assert (result.returncode == 0) == succeeds, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def streams(tmp_path_factory):
    corpus = tmp_path_factory.mktemp("pretrain") / "corpus"
    write_demo_corpus(corpus, seed=7, num_images=(8, 2, 2), num_videos=(4, 1, 1), num_audios=(2, 1, 1),
                      modalities=("image", "video"))
    data = corpus.parent / "streams"
    for split in ("train", "valid"):
        assert cli_main(["prepare", "pretrain", "--out", str(data), "--stream", "image", "--split", split,
                         "--caption", str(corpus / f"caption_{split}.tsv"), "--vqa", str(corpus / f"vqa_{split}.tsv"),
                         "--grounding", str(corpus / f"refcoco_{split}.tsv")]) == 0
        assert cli_main(["prepare", "pretrain", "--out", str(data), "--stream", "video", "--split", split,
                         "--video-caption", str(corpus / f"video_caption_{split}.tsv"),
                         "--video-qa", str(corpus / f"video_vqa_{split}.tsv")]) == 0
    return data, corpus


def logged(output, key):
    """Values of ``key=`` in the train_inner lines of a fairseq-train log."""
    return [float(value) for value in re.findall(rf"train_inner .*?\b{key}=([0-9.]+)", output)]


def test_the_curriculum_script_chains_every_stage_from_the_one_before(streams, tmp_path):
    data, corpus = streams
    weights = {name: tmp_path / name for name in ("bart.pt", "kinetics.pth", "cnn14.pth")}
    for path in weights.values():
        path.write_text("")
    output = run_script({"DATA": str(data), "SAVE_DIR": str(tmp_path / "run"), "DICT_FILE": str(DICT_FILE),
                         "DRY_RUN": "1", "BART_CHECKPOINT": str(weights["bart.pt"]),
                         "VIDEO_ENCODER_PATH": str(weights["kinetics.pth"]),
                         "AUDIO_ENCODER_PATH": str(weights["cnn14.pth"])}, "--max-update", "5")
    commands = [line for line in output.splitlines() if line.startswith("+ fairseq-train")]
    stages = ["stage1_image", "stage2_video", "stage3_audio", "hires"]
    assert len(commands) == 4
    for number, (stage, command) in enumerate(zip(stages, commands)):
        assert f"--save-dir {tmp_path / 'run' / stage}" in command and command.endswith("--max-update 5")
        if number == 0:
            assert "--finetune-from-model" not in command and "--video-encoder" not in command
        else:
            assert f"--finetune-from-model {tmp_path / 'run' / stages[number - 1] / 'checkpoint_last.pt'}" in command
    assert "--streams image " in commands[0] and "--streams image,video " in commands[1]
    assert "--streams image,video,audio " in commands[2] and "--audio-encoder cnn14" in commands[2]
    assert "--patch-image-size 480" in commands[3] and "--lr 5e-05" in commands[3]
    # each pretrained file goes to the stage that adds its part
    for option, name, stage in (("--bart-path", "bart.pt", 0), ("--video-encoder-path", "kinetics.pth", 1),
                                ("--audio-encoder-path", "cnn14.pth", 2)):
        assert [f"{option} {weights[name]}" in command for command in commands] == [n == stage for n in range(4)]


def test_a_later_stage_continues_from_the_stage_before_it_and_missing_files_are_found_first(streams, tmp_path):
    data, _ = streams
    env = {"DATA": str(data), "SAVE_DIR": str(tmp_path / "run"), "DICT_FILE": str(DICT_FILE), "DRY_RUN": "1",
           "STAGES": "stage2_video"}
    output = run_script(env)
    assert f"warning: stage stage2_video starts from scratch: no INIT_CHECKPOINT and no {tmp_path}/run/" \
           "stage1_image/checkpoint_last.pt" in output and "--finetune-from-model" not in output
    before = tmp_path / "run" / "stage1_image" / "checkpoint_last.pt"
    before.parent.mkdir(parents=True)
    before.write_text("")
    output = run_script(env)
    assert f"stage stage2_video starts from {before}, the stage before it" in output
    assert f"--finetune-from-model {before}" in output
    # the audio stage's training file is missing (the corpus has image and video streams): a dry run warns, a real
    # run stops before stage 2 trains; so does an encoder weight file that is not there
    output = run_script({**env, "STAGES": "stage2_video stage3_audio"})
    assert f"warning: stage stage3_audio trains on the audio stream: {data}/audio_train.tsv not found" in output
    real = {key: value for key, value in env.items() if key != "DRY_RUN"}
    output = run_script({**real, "STAGES": "stage2_video stage3_audio"}, succeeds=False)
    assert f"stage stage3_audio trains on the audio stream: {data}/audio_train.tsv not found" in output
    assert "fairseq-train" not in output and not (tmp_path / "run" / "stage2_video").exists()
    output = run_script({**real, "AUDIO_ENCODER_PATH": str(tmp_path / "cnn14.pth")}, succeeds=False)
    assert f"AUDIO_ENCODER_PATH={tmp_path / 'cnn14.pth'}: no such file" in output


def test_missing_validation_files_are_found_before_the_first_stage(streams, tmp_path):
    """A later stage's missing <stream>_valid.tsv stopped the run after the earlier stages had trained."""
    data, _ = streams
    copy = tmp_path / "streams"
    copy.mkdir()
    for path in data.glob("*.tsv"):
        if path.name != "video_valid.tsv":
            (copy / path.name).write_bytes(path.read_bytes())
    env = {"DATA": str(copy), "SAVE_DIR": str(tmp_path / "run"), "DICT_FILE": str(DICT_FILE),
           "STAGES": "stage1_image stage2_video"}
    missing = (f"stage stage2_video trains on the video stream: {copy}/video_valid.tsv not found (unival prepare "
               f"pretrain --stream video --split valid --out DATA); without validation data pass --disable-validation")
    output = run_script(env, succeeds=False)
    assert missing in output and "fairseq-train" not in output and not (tmp_path / "run").exists()
    assert f"warning: {missing}" in run_script({**env, "DRY_RUN": "1"})
    assert "not found" not in run_script({**env, "DRY_RUN": "1"}, "--disable-validation")
    # another validation split is looked for under its own name
    output = run_script({**env, "DRY_RUN": "1"}, "--valid-subset", "test")
    assert f"{copy}/image_test.tsv not found" in output and "video_valid.tsv" not in output


def test_stage_one_learns_and_stage_two_adds_video_from_it(streams, tmp_path):
    data, corpus = streams
    env = {"DATA": str(data), "SAVE_DIR": str(tmp_path / "run"), "DICT_FILE": str(DICT_FILE), "MEDIA_DIR": str(corpus)}
    stage1 = run_script({**env, "STAGES": "stage1_image"}, *TINY, "--max-update", "10", "--total-num-update", "10",
                        "--lr", "5e-4")
    losses = logged(stage1, "loss_image")
    assert len(losses) == 10 and losses == logged(stage1, "loss")  # one stream: its loss is the loss
    assert max(losses[-3:]) < losses[0] - 1.0
    assert "valid on 'valid' subset" in stage1 and "loss_video" not in stage1
    first = tmp_path / "run" / "stage1_image" / "checkpoint_last.pt"
    stage1_weights = torch.load(first, map_location="cpu", weights_only=False)["model"]
    assert not any(".embed_videos." in key for key in stage1_weights)
    # started again, the script leaves a finished stage as it is
    stamp = first.stat().st_mtime_ns
    again = run_script({**env, "STAGES": "stage1_image"}, *TINY, "--max-update", "10", "--total-num-update", "10")
    assert "stage stage1_image already finished" in again and "fairseq" not in again
    assert first.stat().st_mtime_ns == stamp

    stage2 = run_script({**env, "STAGES": "stage2_video", "INIT_CHECKPOINT": str(first)}, *TINY,
                        "--video-encoder", "r3d_18", "--num-frames", "2", "--patch-frame-size", "32",
                        "--max-update", "3", "--total-num-update", "3")
    assert "the checkpoint has no embed_videos weights: keeping this model's own initialisation" in stage2
    image, video, total = logged(stage2, "loss_image"), logged(stage2, "loss_video"), logged(stage2, "loss")
    assert len(video) == 3 and all(abs(a + b - c) < 0.01 for a, b, c in zip(image, video, total))
    # stage 2 starts from stage 1: its first image loss is stage 1's last, not a fresh model's
    assert image[0] < losses[0] - 1.0
    stage2_weights = torch.load(tmp_path / "run" / "stage2_video" / "checkpoint_last.pt", map_location="cpu",
                                weights_only=False)["model"]
    assert any(".embed_videos." in key for key in stage2_weights)
