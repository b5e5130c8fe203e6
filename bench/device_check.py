"""The GPU checks in one command, for the few minutes a GPU machine is lent (README, Performance, "Checking on a
GPU"): a few fairseq-train updates under each precision option, fairseq-generate with a float16 model, the fused
attention kernels against the math one, a few pretraining updates mixing an image and an audio stream in float16,
and the benchmarks in each precision with their MFU. Each check runs in its own process under a time limit; a table
is printed and ``device_check.json`` says what ran, what it measured, and what failed with the end of its output.

    python -m bench.device_check --out results            # on the GPU machine
    python -m bench.device_check --device cpu --quick     # the same plan at toy scale on a CPU (what the tests run)
"""
import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

# fairseq-train options of each precision check: none is float32, the others are what run_scripts/ pass
# (PRECISION=fp16, PRECISION=bf16) and fairseq's own mixed precision. The float16 run keeps a float32 EMA of its
# float16 weights, as the VQA and video-QA configs do on GPUs.
TRAIN_PRECISIONS = {
    "fp32": [],
    "fp16": ["--fp16", "--store-ema", "--ema-decay", "0.99", "--ema-fp32"],
    "amp": ["--amp"],
    "autocast_bf16": ["--autocast-bf16"],
    "autocast_bf16_compiled": ["--autocast-bf16", "--compile-layers"],
}
CUDA_ONLY = {"fp16", "amp"}  # fairseq's float16 optimizers and GradScaler are CUDA's
BENCH_DTYPES = ("bf16", "fp16", "fp32")
LOSS = re.compile(r"\| train_inner \| .*? loss=([-\w.]+),")
TAIL_CHARS = 3000
MIN_CHECK_S = 20  # a check given less time than this is not started


@dataclass
class Check:
    """One command and what its output must show: ``verify`` returns the figures to record or raises."""
    name: str
    command: List[str]
    timeout_s: float
    verify: Callable[[str], Dict]


@dataclass
class Plan:
    device: str
    out: Path
    work: Path
    quick: bool
    threads: int

    @property
    def updates(self) -> int:
        return 6 if self.quick else 30


def train_losses(output: str) -> List[float]:
    """The per-update losses a fairseq-train log with ``--log-interval 1 --log-format simple`` shows."""
    return [float(value) for value in LOSS.findall(output)]


def verify_training(updates: int) -> Callable[[str], Dict]:
    def verify(output: str) -> Dict:
        losses = train_losses(output)
        if len(losses) < updates // 2:
            raise AssertionError(f"{len(losses)} logged updates of {updates} (float16 may skip a few at most)")
        if not all(math.isfinite(loss) for loss in losses):
            raise AssertionError(f"a loss is not finite: {losses}")
        last = sum(losses[-3:]) / len(losses[-3:])
        if not last < losses[0]:
            raise AssertionError(f"the loss did not fall: first {losses[0]:.3f}, last three {last:.3f}")
        return {"updates_logged": len(losses), "first_loss": losses[0], "last_loss": losses[-1]}
    return verify


def verify_generation(expected: int) -> Callable[[str], Dict]:
    def verify(output: str) -> Dict:
        hypotheses = [line for line in output.splitlines() if line.startswith("D-")]
        if len(hypotheses) != expected:
            raise AssertionError(f"{len(hypotheses)} hypotheses for {expected} test images")
        return {"hypotheses": len(hypotheses), "example": hypotheses[0].split("\t")[-1]}
    return verify


def verify_bench(path: Path) -> Callable[[str], Dict]:
    def verify(output: str) -> Dict:
        results = json.loads(path.read_text())
        figures = {}
        for name, row in results.get("train_step", {}).items():
            figures[f"{name}_train_s"] = row["median_s"]
            figures[f"{name}_train_mfu"] = row.get("fraction_of_peak")
        for name, rows in results.get("generate", {}).items():
            for label in ("greedy", "beam5"):
                if label in rows:
                    figures[f"{name}_{label}_s"] = rows[label]["median_s"]
        if not figures:
            raise AssertionError(f"{path.name} holds no training or generation figures")
        return figures
    return verify


def verify_attention(output: str) -> Dict:
    result = json.loads(output[output.index("{\n"):output.index("\n}") + 2])
    if not result["ok"]:
        raise AssertionError(f"fused attention differs from the math kernel: {result}")
    return {key: result[key] for key in ("logits_error", "worst_gradient_error", "bias_gradient_error",
                                         "key_bias_gradient")}


def attention_checks(plan: Plan) -> List[Check]:
    """The fused attention kernels against the math one, with the model's learned additive bias."""
    dtypes = ("fp32",) if plan.device == "cpu" else ("bf16", "fp16", "fp32")
    return [Check(f"attention_{dtype}", python_module("bench.attention_check", "--device", plan.device, "--dtype",
                                                      dtype, "--threads", str(plan.threads)), 120, verify_attention)
            for dtype in dtypes]


def python_module(module: str, *arguments: str) -> List[str]:
    return [sys.executable, "-m", module, *arguments]


def bench_checks(plan: Plan) -> List[Check]:
    dtypes = ("fp32",) if plan.device == "cpu" else BENCH_DTYPES
    checks = []
    for dtype in dtypes:
        path = plan.out / f"bench_{dtype}.json"
        arguments = ["--device", plan.device, "--dtype", dtype, "--threads", str(plan.threads), "--skip-data",
                     "--out", str(path)]
        if plan.quick:
            arguments += ["--config", "tiny", "--steps", "2", "--warmup", "1"]
        checks.append(Check(f"bench_{dtype}", python_module("bench.run_all", *arguments),
                            300 if plan.quick else 240, verify_bench(path)))
    return checks


def training_options(plan: Plan, data: Path) -> List[str]:
    from unival.train import plugin_dir

    options = [str(data), "--user-dir", plugin_dir(), "--task", "caption", "--tsv-prefix", "caption",
               "--arch", "unival_tiny", "--patch-image-size", "64", "--max-src-length", "30",
               "--max-tgt-length", "20", "--batch-size", "16", "--optimizer", "unival_adam", "--lr", "1e-3",
               "--lr-scheduler", "polynomial_decay", "--warmup-updates", "2", "--total-num-update", "100",
               "--criterion", "adjust_label_smoothed_cross_entropy", "--label-smoothing", "0.1",
               "--num-workers", "0", "--log-format", "simple", "--log-interval", "1", "--seed", "1",
               "--max-update", str(plan.updates), "--disable-validation", "--no-epoch-checkpoints"]
    return options + (["--cpu"] if plan.device == "cpu" else [])


def training_checks(plan: Plan, data: Path) -> List[Check]:
    from unival.tasks.base import native_bfloat16_cpu

    checks = []
    for name, flags in TRAIN_PRECISIONS.items():
        if plan.device == "cpu" and (name in CUDA_ONLY or (plan.quick and name.endswith("_compiled"))):
            continue  # CUDA's, or minutes of CPU compilation for a toy run
        if plan.device == "cpu" and "--autocast-bf16" in flags and native_bfloat16_cpu() is False:
            continue  # emulated bfloat16: refused by the task, see README
        save_dir = plan.work / f"train_{name}"
        command = python_module("fairseq_cli.train", *training_options(plan, data), "--save-dir", str(save_dir),
                                *flags)
        limit = 240 if plan.quick or "--compile-layers" in flags else 150  # compiling takes a minute or two
        checks.append(Check(f"train_{name}", command, limit, verify_training(plan.updates)))
    return checks


def generation_check(plan: Plan, data: Path, test_images: int) -> Check:
    from unival.train import plugin_dir

    checkpoint = plan.work / "train_fp32" / "checkpoint_last.pt"
    command = python_module("fairseq_cli.generate", str(data), "--user-dir", plugin_dir(), "--task", "caption",
                            "--tsv-prefix", "caption", "--patch-image-size", "64", "--path", str(checkpoint),
                            "--gen-subset", "test", "--beam", "5", "--max-len-b", "16", "--batch-size", "8",
                            "--fp16", *(["--cpu"] if plan.device == "cpu" else []))
    return Check("generate_fp16", command, 180, verify_generation(test_images))


def verify_pretraining(updates: int, streams: List[str]) -> Callable[[str], Dict]:
    """The training verdict, plus each stream's loss logged and finite at every update."""
    check_losses = verify_training(updates)

    def verify(output: str) -> Dict:
        figures = check_losses(output)
        for stream in streams:
            losses = [float(value) for value in re.findall(rf"\| train_inner \| .*? loss_{stream}=([-\w.]+),", output)]
            if len(losses) != figures["updates_logged"] or not all(math.isfinite(loss) for loss in losses):
                raise AssertionError(f"loss_{stream}: {losses} for {figures['updates_logged']} logged updates")
            figures[f"last_loss_{stream}"] = losses[-1]
        return figures
    return verify


PRETRAINING_STREAMS = ["image", "audio"]  # decord and PyAV are not in the device bundle: no video stream


def pretraining_check(plan: Plan, streams: Path, data: Path) -> Check:
    """Pretraining (task unify) on an image and an audio stream in every batch, each stream's loss normalised on
    its own, in the GPU's float16 (float32 on the CPU)."""
    from unival.train import plugin_dir

    options = [str(streams), "--user-dir", plugin_dir(), "--task", "unify", "--streams", ",".join(PRETRAINING_STREAMS),
               "--media-dir", str(data), "--arch", "unival_tiny", "--patch-image-size", "64", "--audio-encoder",
               "cnn6", "--audio-sample-rate", "16000", "--audio-hop-size", "160", "--audio-window-size", "512",
               "--audio-fmax", "8000", "--audio-clip-seconds", "1.0", "--max-src-length", "40", "--max-tgt-length",
               "16", "--batch-size", "12", "--optimizer", "unival_adam", "--lr", "1e-3", "--lr-scheduler",
               "polynomial_decay", "--warmup-updates", "2", "--total-num-update", "100", "--criterion",
               "adjust_label_smoothed_cross_entropy", "--num-workers", "0", "--log-format", "simple",
               "--log-interval", "1", "--seed", "1", "--max-update", str(plan.updates), "--disable-validation",
               "--no-save", "--save-dir", str(plan.work / "train_pretrain")]
    options += ["--cpu"] if plan.device == "cpu" else ["--fp16"]
    return Check("train_pretrain", python_module("fairseq_cli.train", *options), 240,
                 verify_pretraining(plan.updates, PRETRAINING_STREAMS))


def run_check(check: Check, threads: int, cwd: Path, seconds_left: float = math.inf) -> Dict:
    """Runs ``check`` for at most its own limit and ``seconds_left``; its verdict, figures and, if it failed, the
    end of its output."""
    timeout = min(check.timeout_s, seconds_left)
    if seconds_left < MIN_CHECK_S:
        print(f"[device_check] {check.name}: not run, {seconds_left:.0f} s of --budget-s left", flush=True)
        return {"ok": False, "seconds": 0.0, "exit_status": None, "error": "not run: out of --budget-s"}
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    start = time.time()
    print(f"[device_check] {check.name}: {' '.join(check.command[1:])}", flush=True)
    try:
        completed = subprocess.run(check.command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
        output, status = completed.stdout + completed.stderr, completed.returncode
    except subprocess.TimeoutExpired as expired:
        output = (expired.stdout or b"").decode(errors="replace") + (expired.stderr or b"").decode(errors="replace")
        output, status = output + f"\n[timed out after {timeout:.0f} s]", None
    record = {"seconds": round(time.time() - start, 1), "exit_status": status}
    if status == 0:
        try:
            record.update(ok=True, **check.verify(output))
        except (AssertionError, ValueError, KeyError, OSError) as error:
            record.update(ok=False, error=str(error), output_tail=output[-TAIL_CHARS:])
    else:
        record.update(ok=False, error="exit status " + ("(timed out)" if status is None else str(status)),
                      output_tail=output[-TAIL_CHARS:])
    print(f"[device_check] {check.name}: {'ok' if record['ok'] else 'FAILED: ' + record['error']} "
          f"({record['seconds']} s)", flush=True)
    return record


def environment(device: str) -> Dict:
    import fairseq

    info = {"python": sys.version.split()[0], "torch": torch.__version__, "fairseq": fairseq.__version__,
            "device": device}
    if device == "cuda":
        info.update(gpu=torch.cuda.get_device_name(0), capability=list(torch.cuda.get_device_capability(0)),
                    cuda=torch.version.cuda, bf16_supported=torch.cuda.is_bf16_supported())
    return info


def plan_checks(plan: Plan) -> List[Check]:
    from unival.data_utils.demo_corpus import write_demo_corpus

    data = plan.work / "data"
    num_images = (32, 8, 8) if plan.quick else (64, 8, 16)
    write_demo_corpus(data, seed=1, num_images=num_images, num_audios=(16, 2, 2), modalities=("image", "audio"))
    from bench.pretrain_step import write_streams
    write_streams(data, plan.work / "streams", PRETRAINING_STREAMS)
    # the GPU paths' correctness first, then the timings: a run cut short still says what matters most
    return (training_checks(plan, data) + [generation_check(plan, data, test_images=num_images[2])]
            + attention_checks(plan) + [pretraining_check(plan, plan.work / "streams", data)] + bench_checks(plan))


def render(results: Dict) -> str:
    lines = ["| check | result | seconds | figures |", "| --- | --- | --- | --- |"]
    for name, record in results["checks"].items():
        figures = {key: value for key, value in record.items()
                   if key not in ("ok", "seconds", "exit_status", "error", "output_tail")}
        shown = ", ".join(f"{key} {value:.3g}" if isinstance(value, float) else f"{key} {value}"
                          for key, value in figures.items())
        result = "ok" if record["ok"] else f"FAILED: {record['error']}"
        lines.append(f"| {name} | {result} | {record['seconds']} | {shown} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--out", required=True, help="folder for device_check.json and the benchmarks' JSON")
    parser.add_argument("--quick", action="store_true", help="toy scale: tiny benchmark only, 6 updates")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of each process")
    parser.add_argument("--budget-s", type=float, default=540,
                        help="seconds for all the checks (default 540, inside the device tool's 600 s per command): "
                             "each is cut to what is left, and those that would get under 20 s are not started")
    parser.add_argument("--only", nargs="+", metavar="CHECK",
                        help="run only these checks (names as in the table, e.g. train_fp16 generate_fp16)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench.device_check: --device cuda, but torch sees no CUDA device (--device cpu for the "
                         "toy-scale run)")
    deadline = time.time() + args.budget_s
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    repo = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="unival_device_check_") as work:
        plan = Plan(args.device, out.resolve(), Path(work), args.quick, args.threads)
        checks = plan_checks(plan)
        if args.only:
            unknown = sorted(set(args.only) - {check.name for check in checks})
            if unknown:
                raise SystemExit(f"bench.device_check: no check {', '.join(unknown)} on {args.device} (checks: "
                                 f"{', '.join(check.name for check in checks)})")
            needed = set(args.only) | ({"train_fp32"} if "generate_fp16" in args.only else set())
            checks = [check for check in checks if check.name in needed]
        results = {"environment": environment(args.device), "quick": args.quick, "checks": {}}
        for check in checks:
            results["checks"][check.name] = run_check(check, args.threads, repo, deadline - time.time())
            # after every check, so that a run stopped from outside keeps what it did
            (out / "device_check.json").write_text(json.dumps(results, indent=2) + "\n")
    print(render(results))
    print(f"wrote {out / 'device_check.json'}")
    return 0 if all(record["ok"] for record in results["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
