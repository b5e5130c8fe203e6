"""Data-parallel fairseq-train in two processes (gloo on the CPU, as NCCL runs it on GPUs): the ranks split the
training batches, validation metrics summed over the ranks equal a single process's, and a validation split
smaller than a batch (one rank gets nothing) is scored whole."""
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from unival.data_utils.demo_corpus import write_demo_corpus
from unival.train import plugin_dir

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent
OPTIONS = [
    "--task", "caption", "--tsv-prefix", "caption", "--patch-image-size", "64", "--max-src-length", "30",
    "--max-tgt-length", "20", "--batch-size", "8", "--eval-beam", "2", "--eval-max-len", "8", "--num-workers", "0",
    "--criterion", "adjust_label_smoothed_cross_entropy", "--label-smoothing", "0.1", "--cpu",
]
TRAIN_OPTIONS = [
    "--arch", "unival_tiny", "--optimizer", "unival_adam", "--lr", "1e-3", "--lr-scheduler", "polynomial_decay",
    "--warmup-updates", "2", "--total-num-update", "50", "--clip-norm", "1.0", "--log-format", "simple",
    "--log-interval", "5", "--seed", "3", "--best-checkpoint-metric", "cider", "--maximize-best-checkpoint-metric",
    "--max-epoch", "2",
    # fairseq's default DistributedDataParallel wrapper asks for a GPU (device_ids); its own wrapper does not
    "--distributed-world-size", "2", "--distributed-backend", "gloo", "--ddp-backend", "legacy_ddp",
    "--distributed-no-spawn", "--device-id", "0",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_ranks(commands, folder, env, timeout_s=600):
    """Runs the ranks' commands together, logging to files (a pipe left unread can fill and block a rank); stops
    them all as soon as one fails (the others would wait for it in a collective); returns their logs."""
    logs = [folder / f"rank{rank}.log" for rank in range(len(commands))]
    processes = []
    for command, log in zip(commands, logs):
        with open(log, "w") as out:
            processes.append(subprocess.Popen(command, cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + timeout_s
    while True:
        codes = [process.poll() for process in processes]
        if None not in codes or any(codes) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    failed = [rank for rank, code in enumerate(codes) if code] or [rank for rank, code in enumerate(codes)
                                                                   if code is None]  # the timed-out ones
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait()
    assert not failed, "\n".join(f"rank {rank} failed or timed out:\n{logs[rank].read_text()[-3000:]}"
                                  for rank in failed)
    return [log.read_text() for log in logs]


def validation(log: str):
    """(loss, cider, bsz) of the last validation line of a fairseq log."""
    line = [line for line in log.splitlines() if "valid on 'valid' subset" in line][-1]
    return tuple(float(re.search(rf"\| {name} ([\d.]+)", line).group(1)) for name in ("loss", "cider", "bsz"))


def test_two_ranks_train_and_validate_as_one_process_would(tmp_path):
    corpus = tmp_path / "data"
    write_demo_corpus(corpus, seed=5, num_images=(32, 5, 4), modalities=("image",))
    save_dir = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    train = [str(BIN / "fairseq-train"), str(corpus), "--user-dir", plugin_dir(), "--save-dir", str(save_dir),
             "--distributed-init-method", f"tcp://127.0.0.1:{free_port()}"] + OPTIONS + TRAIN_OPTIONS
    log = run_ranks([train + ["--distributed-rank", str(rank)] for rank in range(2)], tmp_path, env)[0]

    assert "training on 2 devices" in log
    # 32 images x 5 captions, 8 per rank and step: 10 updates per epoch (20 on one process)
    epochs = re.findall(r"\| train \| epoch 00(\d) \|.*\| bsz ([\d.]+) \| num_updates (\d+)", log)
    assert epochs == [("1", "16", "10"), ("2", "16", "20")], epochs
    assert (save_dir / "checkpoint_last.pt").is_file() and not list(save_dir.glob("*.tmp"))

    single = subprocess.run([str(BIN / "fairseq-validate"), str(corpus), "--user-dir", plugin_dir(), "--path",
                             str(save_dir / "checkpoint_last.pt"), "--valid-subset", "valid"] + OPTIONS,
                            cwd=tmp_path, env=dict(env, OMP_NUM_THREADS="2"), capture_output=True, text=True,
                            timeout=600)
    assert single.returncode == 0, single.stderr[-4000:]
    loss, cider, batch = validation(log)
    assert batch == 5  # the 5 validation captions were all scored, though rank 1 got none of them
    assert (loss, cider, batch) == validation(single.stderr + single.stdout)
    assert cider > 0


def test_a_rank_whose_validation_batch_is_all_bad_rows_keeps_step_with_the_other(tmp_path):
    """--skip-bad-rows with two ranks: rank 1's only validation batch is four bad rows while rank 0 scores four
    good ones. Every rank must log the same keys at each step (fairseq sums them in one buffer): a batch of counts
    only made the ranks' buffers differ (gloo aborted; NCCL would hang). The bad batch is now run as a stand-in
    whose logs are zeroed but for the count."""
    corpus = tmp_path / "data"
    write_demo_corpus(corpus, seed=5, num_images=(8, 12, 2), modalities=("image",))
    valid = corpus / "caption_valid.tsv"
    rows = [line.split("\t") for line in valid.read_text().splitlines()]
    assert len(rows) == 12
    for row in rows[4:8]:  # the second batch of four: rank 1's
        row[-1] = "bm90IGFuIGltYWdl"  # base64 of "not an image"
    valid.write_text("".join("\t".join(row) + "\n" for row in rows))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    train = [str(BIN / "fairseq-train"), str(corpus), "--user-dir", plugin_dir(), "--save-dir", str(tmp_path / "run"),
             "--distributed-init-method", f"tcp://127.0.0.1:{free_port()}"] + OPTIONS + TRAIN_OPTIONS + [
             "--skip-bad-rows", "--batch-size", "4", "--max-update", "2", "--no-save"]
    log = run_ranks([train + ["--distributed-rank", str(rank)] for rank in range(2)], tmp_path, env)[0]
    line = [line for line in log.splitlines() if "valid on 'valid' subset" in line][-1]
    assert "| skipped_rows 4 |" in line
    assert float(re.search(r"\| bsz ([\d.]+)", line).group(1)) == 4  # rank 0's two batches of 4, over 2 steps
    assert "| cider " in line
