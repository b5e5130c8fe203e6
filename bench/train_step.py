"""Training-step benchmark: forward, backward and Adam update of the issue's configurations at fixed shapes,
with peak memory, model FLOPs and the fraction of the machine's matmul peak, printed as JSON.

    python -m bench.train_step --threads 2                      # CPU, float32, tiny and base
    python -m bench.train_step --device cuda --dtype bf16
"""
import argparse
import gc
from typing import Dict, List, Optional

import torch

from bench import common

OPTIMIZERS = ("fused", "foreach", "fairseq")


def make_optimizer(model: torch.nn.Module, name: str, device: torch.device) -> torch.optim.Optimizer:
    """Adam with decoupled weight decay 0.01 (the paper's) as ``fairseq-train --optimizer unival_adam`` builds
    it (torch's AdamW, one fused kernel on CPU and CUDA, or multi-tensor foreach), or fairseq's ``adam``."""
    params = [p for p in model.parameters() if p.requires_grad]
    settings = dict(lr=[1e-4], adam_betas="(0.9, 0.999)", adam_eps=1e-8, weight_decay=0.01)
    if name == "fairseq":
        # What ``fairseq-train --optimizer adam`` builds when apex is not installed: a per-tensor Python loop.
        from fairseq.optim.adam import FairseqAdam, FairseqAdamConfig
        return FairseqAdam(FairseqAdamConfig(tpu=False, **settings), params).optimizer
    from unival.optim import UnivalAdam, UnivalAdamConfig
    return UnivalAdam(UnivalAdamConfig(fused=name == "fused", **settings), params).optimizer


def training_loss(model, sample: Dict) -> torch.Tensor:
    """Summed label-smoothed cross entropy (0.1) of the sample, as the project's criterion computes it."""
    from unival.criterions.adjust_label_smoothed_cross_entropy import label_smoothed_nll_loss

    logits, extra = model(**sample["net_input"])
    lprobs = model.get_normalized_probs((logits, extra), log_probs=True)
    loss, _ = label_smoothed_nll_loss(lprobs.view(-1, lprobs.size(-1)), sample["target"].view(-1), 0.1)
    return loss.sum()


def measure(args: argparse.Namespace, name: str, device: torch.device) -> Dict:
    config = common.bench_config(args, name)
    gc.collect()
    common.reset_peak_memory(device)
    rss_before = common.rss_bytes()
    model, dictionary = common.build_model(config, device, args.no_channels_last, args.compile)
    model.train()
    sample = common.make_batch(config, dictionary, device)
    optimizer = make_optimizer(model, args.optimizer, device)
    # Loss scaling only matters for fp16, whose small gradients would underflow.
    scaler = torch.amp.GradScaler(device.type, enabled=args.dtype == "fp16")

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with common.autocast(device, args.dtype):
            loss = training_loss(model, sample)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    timing = common.timed_median(step, args.steps, args.warmup, device)
    memory = common.peak_memory(device)
    flops = common.count_flops(step)
    result = {"config": common.config_record(config), "optimizer": args.optimizer,
              "parameters": sum(p.numel() for p in model.parameters()), **timing,
              "model_flops": flops, "achieved_flops_per_s": flops / timing["median_s"], **memory}
    if device.type == "cpu":
        result["rss_before_model_bytes"] = rss_before
        result["peak_rss_delta_bytes"] = result["peak_rss_bytes"] - rss_before
    reference = common.REFERENCE[name] if is_reference_shape(args) else {}
    if "train_step_s" in reference:
        result["reference_s"] = reference["train_step_s"]
        result["speedup"] = common.speedup(reference["train_step_s"], timing["median_s"])
    if "train_peak_rss_bytes" in reference and device.type == "cpu":
        result["reference_peak_rss_bytes"] = reference["train_peak_rss_bytes"]
    del model, optimizer, sample
    return result


def is_reference_shape(args: argparse.Namespace) -> bool:
    """The reference figures only apply at the issue's shapes, in float32 on the CPU with 2 threads (as they
    were measured)."""
    overridden = any(getattr(args, key) is not None
                     for key in ("batch_size", "image_size", "tokens", "vocab_size", "image_encoder"))
    return not overridden and args.device == "cpu" and args.dtype == "fp32" and args.threads == 2


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(parser)
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="fused",
                        help="fused: torch AdamW(fused=True), no temporaries; foreach: AdamW(foreach=True); "
                             "fairseq: what fairseq-train --optimizer adam runs without apex (a per-tensor loop)")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> Dict:
    return common.run("train_step", parse_args(argv), measure, lambda result: [result])


if __name__ == "__main__":
    main()
