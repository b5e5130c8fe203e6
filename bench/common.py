"""Shared pieces of the benchmarks: the issue's model configurations and shapes, the original code's reference
figures, timing, peak memory, FLOP counting and the JSON every script prints."""
import argparse
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable, Dict, List, Optional

import torch
from fairseq.data import Dictionary

from unival import allocator
from unival.models import cpu_linear
from unival.tasks.base import native_bfloat16_cpu, refuse_emulated_bfloat16

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class BenchConfig:
    """One model configuration of the issue and the shapes it is measured at."""

    name: str
    arch: str
    image_encoder: str
    image_encoder_stages: int
    vocab_size: int
    batch_size: int
    image_size: int = 256
    source_tokens: int = 20
    target_tokens: int = 20


# The original's small configuration (2+2 layers, 256 dims, ResNet-50 stages 1-3, 3029 symbols) and its
# unival_base with the original default image encoder (ResNet-101 stages 1-3, stride 16) and full vocabulary.
CONFIGS = {
    "tiny": BenchConfig("tiny", "unival_tiny", "resnet50", 3, 3029, batch_size=8),
    "base": BenchConfig("base", "unival_base", "resnet101", 3, 59457, batch_size=2),
}

# The original code (torch 1.13, float32, 2 CPU threads, on a machine shared with other work), from issue 6.
REFERENCE = {
    "tiny": {"train_step_s": 4.1, "greedy_s": 2.1, "beam5_s": 2.9},
    "base": {"train_step_s": 4.5, "train_peak_rss_bytes": 4.6e9, "greedy_s": 3.1, "beam5_s": 7.6},
}


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", choices=sorted(CONFIGS), nargs="+", default=["tiny", "base"],
                        help="model configurations to measure")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (torch.set_num_threads)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32",
                        help="fp32; bf16 or fp16 run under autocast (fp16 training with loss scaling)")
    parser.add_argument("--steps", type=int, default=20, help="timed repetitions (the median is reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed repetitions before timing")
    parser.add_argument("--batch-size", type=int, help="override the configuration's batch size")
    parser.add_argument("--image-size", type=int, help="override the 256 px image side")
    parser.add_argument("--tokens", type=int, help="override the 20 source and 20 target tokens")
    parser.add_argument("--vocab-size", type=int, help="override the configuration's vocabulary size")
    parser.add_argument("--image-encoder", help="override the configuration's timm ResNet")
    parser.add_argument("--no-channels-last", action="store_true",
                        help="feed the CNN image encoder NCHW images (the model's --no-channels-last)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the transformer layers")
    parser.add_argument("--release-freed-memory", action="store_true",
                        help="glibc's default allocation (the tasks' --release-freed-memory): freed memory goes "
                             "back to the system; by default it stays in the process, as the tasks keep it")
    parser.add_argument("--allow-emulated-bf16", action="store_true",
                        help="measure bfloat16 on a CPU without bfloat16 instructions (emulated: tens of times "
                             "slower than float32), which is refused otherwise")
    parser.add_argument("--no-peak", action="store_true", help="skip measuring the matmul peak (no MFU)")
    parser.add_argument("--peak-size", type=int, help="matrix side of the peak measurement (default 2048 on CPU, "
                                                      "8192 on CUDA)")


def setup(args: argparse.Namespace) -> torch.device:
    if args.threads < 1:
        raise ValueError(f"--threads must be at least 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda given but torch sees no CUDA device")
    if device.type == "cuda" and args.dtype == "fp32":
        # float32 means float32 here: torch runs cuDNN's float32 convolutions in TF32 by default (matrix products
        # not), which would time most of a step at TF32 speed against a float32 peak
        full_float32_on_cuda()
    if device.type == "cpu" and args.dtype == "fp16":
        raise ValueError("--dtype fp16 needs --device cuda (CPU autocast runs bf16)")
    if device.type == "cpu" and not args.allow_emulated_bf16:
        if args.dtype == "bf16":
            refuse_emulated_bfloat16("--dtype bf16", "--allow-emulated-bf16")
        if getattr(args, "ablation", None) == "bf16_autocast":
            refuse_emulated_bfloat16("--ablation bf16_autocast", "--allow-emulated-bf16")
    if not getattr(args, "release_freed_memory", False):
        from unival.memory import keep_freed_memory
        keep_freed_memory()  # what the unival tasks do when fairseq-train sets them up
    return device


def bench_config(args: argparse.Namespace, name: str) -> BenchConfig:
    """The named configuration with the command line's shape overrides (used by the smoke test)."""
    config = CONFIGS[name]
    overrides = {"batch_size": args.batch_size, "image_size": args.image_size, "vocab_size": args.vocab_size,
                 "image_encoder": args.image_encoder}
    if args.tokens is not None:
        overrides.update(source_tokens=args.tokens, target_tokens=args.tokens)
    return replace(config, **{key: value for key, value in overrides.items() if value is not None})


def dummy_dictionary(size: int) -> Dictionary:
    """A fairseq dictionary of ``size`` symbols: the four specials, then placeholders (no BPE is needed)."""
    dictionary = Dictionary()
    if size <= len(dictionary):
        raise ValueError(f"a vocabulary needs more than the {len(dictionary)} special symbols, got {size}")
    for index in range(size - len(dictionary)):
        dictionary.add_symbol(f"sym{index}")
    return dictionary


def build_model(config: BenchConfig, device: torch.device, no_channels_last: bool = False,
                compile_layers: bool = False):
    """The unival model of ``config`` (paper dropout and drop-path), in training mode, and its dictionary."""
    from unival.models.unival import UnivalConfig, UnivalModel, architecture_defaults

    values = architecture_defaults(config.arch)
    values.update(image_encoder=config.image_encoder, image_encoder_stages=config.image_encoder_stages,
                  no_channels_last=no_channels_last, compile_layers=compile_layers)
    dictionary = dummy_dictionary(config.vocab_size)
    torch.manual_seed(0)
    model = UnivalModel.from_config(UnivalConfig(**values), dictionary).to(device)
    return model, dictionary


def inference_model(model, net_input: Dict) -> None:
    """Puts ``model`` in evaluation mode without gradients, its BatchNorm statistics first taken from one
    training-mode forward of ``net_input``: a randomly initialised ResNet-101 with the initial statistics (mean 0,
    variance 1) grows its activations past float16's range (2.9e5 after stage 3), which a trained one does not,
    and a float16 benchmark would time NaNs (fairseq's generator then fails at its last step). Statistics the
    model had (loaded weights) are replaced."""
    norms = [module for module in model.modules() if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a plain average over the forwards, here the one
    model.train()
    for norm in norms:  # also those of backbones that stay in eval mode (frozen ones)
        norm.train()
    with torch.no_grad():
        model(**net_input)
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    model.eval().requires_grad_(False)


def make_batch(config: BenchConfig, dictionary: Dictionary, device: torch.device) -> Dict:
    """A fairseq sample of random tokens and images at the configuration's shapes (no padding)."""
    generator = torch.Generator().manual_seed(1)
    batch, first = config.batch_size, dictionary.nspecial
    source = torch.randint(first, len(dictionary), (batch, config.source_tokens), generator=generator)
    source[:, -1] = dictionary.eos()
    target = torch.randint(first, len(dictionary), (batch, config.target_tokens), generator=generator)
    target[:, -1] = dictionary.eos()
    previous = torch.cat([torch.full((batch, 1), dictionary.bos()), target[:, :-1]], dim=1)
    images = torch.randn(batch, 3, config.image_size, config.image_size, generator=generator)
    net_input = {
        "src_tokens": source, "src_lengths": torch.full((batch,), config.source_tokens),
        "prev_output_tokens": previous, "patch_images": images,
        "patch_masks": torch.ones(batch, dtype=torch.bool),
    }
    sample = {"net_input": net_input, "target": target, "ntokens": target.numel(), "nsentences": batch}
    return move_to(sample, device)


def move_to(value, device: torch.device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {key: move_to(item, device) for key, item in value.items()}
    return value


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_median(step: Callable[[], object], steps: int, warmup: int, device: torch.device) -> Dict[str, float]:
    """Median, min and max seconds of ``steps`` calls of ``step`` after ``warmup`` untimed ones."""
    if steps < 1:
        raise ValueError(f"--steps must be at least 1, got {steps}")
    for _ in range(warmup):
        step()
    synchronize(device)
    times: List[float] = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}


def onednn_linear_flops(x_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of oneDNN's linear product (x @ weight^T), which torch's counter does not know."""
    return 2 * math.prod(x_shape[:-1]) * x_shape[-1] * weight_shape[0]


def cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of the CPU's fused attention: its two products, Q K^T and the weights times V."""
    from torch.utils.flop_counter import sdpa_flop_count
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def cpu_attention_backward_flops(grad_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                                 **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_backward_flop_count
    return sdpa_backward_flop_count(grad_shape, query_shape, key_shape, value_shape)


def count_flops(run: Callable[[], object]) -> int:
    """FLOPs of one call of ``run`` (matrix products, convolutions, attention), by torch's counter, which is
    taught oneDNN's linear product (models/cpu_linear.py) and the CPU's fused attention kernel (what
    scaled_dot_product_attention runs without gradients: 2-3% of a generation's FLOPs went uncounted)."""
    from torch.utils.flop_counter import FlopCounterMode

    extra = {torch.ops.mkldnn._linear_pointwise: onednn_linear_flops} if cpu_linear.onednn_available() else {}
    for name, formula in (("_scaled_dot_product_flash_attention_for_cpu", cpu_attention_flops),
                          ("_scaled_dot_product_flash_attention_for_cpu_backward", cpu_attention_backward_flops)):
        if hasattr(torch.ops.aten, name):
            extra[getattr(torch.ops.aten, name)] = formula
    counter = FlopCounterMode(display=False, custom_mapping=extra)
    with counter:
        run()
    return int(counter.get_total_flops())


def rss_bytes() -> int:
    return current_status_bytes("VmRSS") or 0


def current_status_bytes(key: str) -> Optional[int]:
    """A memory figure of /proc/self/status (Linux), in bytes; None elsewhere."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def reset_peak_memory(device: torch.device) -> None:
    """Starts a new high-water mark: CUDA's allocator statistics, or the process's peak RSS on Linux."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0).
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
    except OSError:
        pass


def peak_memory(device: torch.device) -> Dict[str, int]:
    """CUDA: the allocator's peak bytes; CPU: the process's peak resident set since the last reset."""
    if device.type == "cuda":
        return {"peak_cuda_allocated_bytes": int(torch.cuda.max_memory_allocated(device))}
    peak = current_status_bytes("VmHWM")
    if peak is None:  # not Linux: ru_maxrss is the peak of the whole run, in kB on Linux, bytes on macOS
        scale = 1 if sys.platform == "darwin" else 1024
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    return {"peak_rss_bytes": int(peak)}


def autocast(device: torch.device, dtype: str):
    """Mixed precision for bf16/fp16 (weights stay float32, as fairseq's --amp); nothing for fp32."""
    if dtype == "fp32":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=DTYPES[dtype])


def machine_peak(args: argparse.Namespace, device: torch.device) -> Optional[Dict[str, float]]:
    if args.no_peak:
        return None
    from bench.matmul_peak import measure_matmul_peak
    peak = measure_matmul_peak(device, args.dtype, args.peak_size)
    if device.type == "cpu":
        allocator.release_free_memory()  # the product's matrices, which would otherwise count in the model's peak
    return peak


def best_peak(*peaks: Optional[Dict[str, float]]) -> Optional[Dict[str, float]]:
    """The fastest of several peak measurements: on a shared machine the peak is measured before and after the
    model runs, and other work only ever makes a measurement slower."""
    measured = [peak for peak in peaks if peak is not None]
    return max(measured, key=lambda peak: peak["flops_per_s"]) if measured else None


def fraction_of_peak(flops: int, seconds: float, peak: Optional[Dict[str, float]]) -> Optional[float]:
    if peak is None or seconds <= 0:
        return None
    return flops / seconds / peak["flops_per_s"]


def add_fractions(record: Dict, peak: Optional[Dict[str, float]]) -> None:
    """Model FLOPs per second of a measurement as a fraction of the peak: at the median time, and at the
    fastest repetition (the least disturbed by other work on the machine)."""
    record["fraction_of_peak"] = fraction_of_peak(record["model_flops"], record["median_s"], peak)
    record["fraction_of_peak_best"] = fraction_of_peak(record["model_flops"], record["min_s"], peak)


def speedup(reference_s: Optional[float], ours_s: float) -> Optional[float]:
    return None if reference_s is None else reference_s / ours_s


def full_float32_on_cuda() -> None:
    """Float32 products and convolutions on CUDA in full float32, not TF32 (torch's default for convolutions)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def environment(args: argparse.Namespace, device: torch.device) -> Dict:
    from unival.allocator import active_allocator
    from unival.memory import freed_memory_kept

    info = {"torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(),
            "device": str(device), "dtype": args.dtype, "cpu_count": os.cpu_count(),
            "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "allocator": active_allocator(), "freed_memory_kept": freed_memory_kept()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["tf32"] = {"matmul": torch.backends.cuda.matmul.allow_tf32, "conv": torch.backends.cudnn.allow_tf32}
    else:
        info.update(cpu=cpu_description(), cpu_capability=torch.backends.cpu.get_cpu_capability(),
                    cpu_bfloat16=native_bfloat16_cpu(), cpu_linear=cpu_linear.backend())
    return info


def cpu_description(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name with its family and model numbers (a virtual machine's name alone, e.g. "AMD EPYC",
    does not tell one generation from another), from ``cpuinfo``; the platform's name where it is not readable."""
    fields = cpu_linear.cpuinfo_fields(cpuinfo)
    name = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return name


def config_record(config: BenchConfig) -> Dict:
    return asdict(config)


def run(benchmark: str, args: argparse.Namespace, measure: Callable, records: Callable[[Dict], List[Dict]]) -> Dict:
    """Measures every configuration of ``args`` between two measurements of the matmul peak, adds each of the
    ``records(result)`` its fractions of the faster peak, prints the JSON and returns it."""
    device = setup(args)
    peak_before = machine_peak(args, device)
    results = {name: measure(args, name, device) for name in args.config}
    peak = best_peak(peak_before, machine_peak(args, device))
    for result in results.values():
        for record in records(result):
            add_fractions(record, peak)
    output = {"benchmark": benchmark, "environment": environment(args, device), "matmul_peak": peak,
              "results": results}
    print_json(output)
    return output


def print_json(result: Dict) -> None:
    json.dump(result, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")
    sys.stdout.flush()
