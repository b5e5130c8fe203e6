"""Ablations: one speed change on and off, alternately, in the same run, so that the machine's drift hits both
alike. Prints JSON with each side's times and the ratio of their medians (off / on: above 1 when the change helps).

    python -m bench.ablation --ablation few_row_linear --config base --measurement greedy
    python -m bench.ablation --ablation late_gradient --config base
    python -m bench.ablation --ablation bf16_autocast --config base     # --autocast-bf16 against float32
    python -m bench.ablation --ablation onednn_linear --config base     # oneDNN against the BLAS for linear layers
    python -m bench.ablation --ablation freed_memory --config tiny      # each side in its own process
    python -m bench.ablation --ablation allocator --config base         # tcmalloc against glibc's malloc

In-process ablations switch the change between repetitions of the same model and batch; ``freed_memory`` and
``allocator`` are settings of the whole process, so their sides alternate between fresh processes of
``bench.train_step``. ``allocator`` compares the allocator ``--malloc`` names (default: what ``auto`` finds,
tcmalloc before jemalloc) with glibc's malloc keeping freed memory (the default where no other is installed).
"""
import argparse
import contextlib
import statistics
from typing import Callable, Dict, Iterator, List, Optional

import torch

from bench import common
from bench.run_all import run_script
from unival import allocator

MEASUREMENTS = ("train", "greedy", "beam5")


@contextlib.contextmanager
def few_row_linear(enabled: bool) -> Iterator[None]:
    """Linear layers with at most FEW_ROWS rows multiply weight @ input^T (off: always F.linear)."""
    from unival.models import layers
    saved = layers.FEW_ROWS
    layers.FEW_ROWS = saved if enabled else 0
    try:
        yield
    finally:
        layers.FEW_ROWS = saved


@contextlib.contextmanager
def late_gradient(enabled: bool) -> Iterator[None]:
    """The output projection's gradient routed to arrive after the lookups' (off: straight to the weight)."""
    from unival.models import unival as unival_model
    saved = unival_model.late_gradient
    if not enabled:
        unival_model.late_gradient = lambda weight: weight
    try:
        yield
    finally:
        unival_model.late_gradient = saved


@contextlib.contextmanager
def skip_identity_reorder(enabled: bool) -> Iterator[None]:
    """The decoder skips reorderings that keep every row (off: fairseq's visit of every module's cache)."""
    from fairseq.models import FairseqIncrementalDecoder
    from unival.models.unival import UnivalDecoder
    saved = UnivalDecoder.reorder_incremental_state_scripting
    if not enabled:
        UnivalDecoder.reorder_incremental_state_scripting = FairseqIncrementalDecoder.reorder_incremental_state_scripting
    try:
        yield
    finally:
        UnivalDecoder.reorder_incremental_state_scripting = saved


@contextlib.contextmanager
def onednn_linear(enabled: bool) -> Iterator[None]:
    """CPU float32 linear layers multiplied by oneDNN (off: by the BLAS, torch's default)."""
    from unival.models import cpu_linear
    saved = cpu_linear.backend()
    cpu_linear.set_backend("onednn" if enabled else "blas")
    try:
        yield
    finally:
        cpu_linear.set_backend(saved)


# The precision bf16_autocast imposes on the repetitions (None: the command line's --dtype).
_forced_dtype: Dict[str, Optional[str]] = {"dtype": None}


@contextlib.contextmanager
def bf16_autocast(enabled: bool) -> Iterator[None]:
    """Forward passes under bfloat16 autocast, as the tasks' --autocast-bf16 runs them (off: float32)."""
    saved = _forced_dtype["dtype"]
    _forced_dtype["dtype"] = "bf16" if enabled else "fp32"
    try:
        yield
    finally:
        _forced_dtype["dtype"] = saved


def precision(args: argparse.Namespace) -> str:
    return _forced_dtype["dtype"] or args.dtype


IN_PROCESS = {"few_row_linear": few_row_linear, "late_gradient": late_gradient,
              "skip_identity_reorder": skip_identity_reorder, "bf16_autocast": bf16_autocast,
              "onednn_linear": onednn_linear}
PROCESS_WIDE = ("freed_memory", "allocator")
ABLATIONS = (*IN_PROCESS, *PROCESS_WIDE)


def repetition(args: argparse.Namespace, device: torch.device) -> Callable[[], object]:
    """One training step or one generation of the configuration, as bench.train_step / bench.generate time it."""
    from bench import generate, train_step

    config = common.bench_config(args, args.config)
    model, dictionary = common.build_model(config, device, args.no_channels_last, args.compile)
    sample = common.make_batch(config, dictionary, device)
    if args.measurement == "train":
        model.train()
        optimizer = train_step.make_optimizer(model, "fused", device)
        scaler = torch.amp.GradScaler(device.type, enabled=args.dtype == "fp16")

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            with common.autocast(device, precision(args)):
                loss = train_step.training_loss(model, sample)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        return step
    common.inference_model(model, sample["net_input"])
    generator = generate.make_generator(model, dictionary, generate.BEAMS[args.measurement], config.target_tokens)
    net_input = {key: value for key, value in sample["net_input"].items() if key != "prev_output_tokens"}

    def decode():
        with torch.no_grad(), common.autocast(device, precision(args)):
            return generator.generate([model], {"net_input": net_input}, bos_token=dictionary.bos())
    return decode


def alternate(run_side: Callable[[bool], Dict], rounds: int) -> Dict:
    """``run_side(on)`` for on, off, on, off... ``rounds`` times each; each side's results and the ratio."""
    sides: Dict[str, List[Dict]] = {"on": [], "off": []}
    for _ in range(rounds):
        for side in ("on", "off"):
            sides[side].append(run_side(side == "on"))
    summary = {side: {"seconds": [record["seconds"] for record in records],
                      "median_s": statistics.median(record["seconds"] for record in records)}
               for side, records in sides.items()}
    for side, records in sides.items():
        if "peak_rss_bytes" in records[0]:
            summary[side]["peak_rss_bytes"] = [record["peak_rss_bytes"] for record in records]
        if "allocator" in records[0]:  # as the side's processes reported it
            summary[side]["allocator"] = records[0]["allocator"]
    summary["off_over_on"] = summary["off"]["median_s"] / summary["on"]["median_s"]
    return summary


def in_process(args: argparse.Namespace, device: torch.device) -> Dict:
    switch = IN_PROCESS[args.ablation]
    run = repetition(args, device)
    for enabled in (True, False):  # warm both paths up
        with switch(enabled):
            for _ in range(args.warmup):
                run()

    def side(enabled: bool) -> Dict:
        with switch(enabled):
            return {"seconds": common.timed_median(run, args.steps, 0, device)["median_s"]}
    return alternate(side, args.rounds)


def separate_processes(args: argparse.Namespace) -> Dict:
    arguments = ["--config", args.config, "--threads", str(args.threads), "--device", args.device,
                 "--dtype", args.dtype, "--steps", str(args.steps), "--warmup", str(args.warmup), "--no-peak",
                 *args.shape_arguments, *passed_flags(args)]
    glibc_env, _ = allocator.child_environment("glibc")
    if args.ablation == "allocator":
        chosen_env, _ = allocator.child_environment(args.malloc)
        kept = ["--release-freed-memory"] if args.release_freed_memory else []
        settings = {True: (kept, chosen_env), False: (kept, glibc_env)}
    else:  # freed_memory, with glibc's malloc on both sides
        settings = {True: ([], glibc_env), False: (["--release-freed-memory"], glibc_env)}

    def side(on: bool) -> Dict:
        extra, env = settings[on]
        result = run_script("bench.train_step", arguments + extra, env)
        record = result["results"][args.config]
        return {"seconds": record["median_s"], "peak_rss_bytes": record.get("peak_rss_bytes"),
                "allocator": result["environment"].get("allocator")}
    return alternate(side, args.rounds)


def passed_flags(args: argparse.Namespace) -> List[str]:
    """The model and precision flags of the command line, which both sides of a process-wide ablation run with."""
    flags = {"--no-channels-last": args.no_channels_last, "--compile": args.compile,
             "--allow-emulated-bf16": args.allow_emulated_bf16}
    return [flag for flag, given in flags.items() if given]


def shape_arguments(args: argparse.Namespace) -> List[str]:
    """The shape overrides of the command line, passed on to bench.train_step's processes."""
    pairs = [("--batch-size", args.batch_size), ("--image-size", args.image_size), ("--tokens", args.tokens),
             ("--vocab-size", args.vocab_size), ("--image-encoder", args.image_encoder)]
    return [text for flag, value in pairs if value is not None for text in (flag, str(value))]


def main(argv: Optional[List[str]] = None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(parser)
    parser.add_argument("--ablation", choices=ABLATIONS, required=True, help="the change switched on and off")
    parser.add_argument("--measurement", choices=MEASUREMENTS, default="train",
                        help="what is timed (freed_memory: the training step only)")
    parser.add_argument("--rounds", type=int, default=6, help="repetitions of each side, alternating")
    parser.add_argument("--malloc", default="auto",
                        help="--ablation allocator: the allocator compared with glibc's (auto: tcmalloc, else "
                             "jemalloc; or tcmalloc, jemalloc, a library's path)")
    parser.set_defaults(config="base", steps=None)
    for action in parser._actions:
        if action.dest == "steps":
            action.help = ("timed repetitions of each side per round (default: 1 in process, alternating every "
                           "repetition; 20 for freed_memory and allocator, each side's process reporting their "
                           "median)")
    args = parser.parse_args(argv)
    if isinstance(args.config, list):
        if len(args.config) != 1:
            parser.error("--config takes one configuration here")
        args.config = args.config[0]
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.no_peak or args.peak_size is not None:
        parser.error("an ablation measures no matmul peak: --no-peak and --peak-size do not apply")
    if args.steps is None:  # in-process sides alternate every repetition; a process's side is its median
        args.steps = 20 if args.ablation in PROCESS_WIDE else 1
    if args.ablation == "freed_memory" and args.release_freed_memory:
        parser.error("--ablation freed_memory compares --release-freed-memory with its absence: do not pass it")
    if args.ablation in PROCESS_WIDE:
        if args.measurement != "train":
            parser.error(f"--ablation {args.ablation} measures the training step only (--measurement train)")
        if args.ablation == "allocator":
            try:
                chosen, _ = allocator.resolve(args.malloc)
            except ValueError as error:
                parser.error(str(error))
            if chosen == "glibc":
                parser.error(f"--ablation allocator: --malloc {args.malloc} gives glibc's malloc, the side it is "
                             f"compared with (install tcmalloc or jemalloc, e.g. apt install libtcmalloc-minimal4)")
        args.shape_arguments = shape_arguments(args)
        device = common.setup(args)
        summary = separate_processes(args)
    else:
        device = common.setup(args)
        summary = in_process(args, device)
    output = {"benchmark": "ablation", "ablation": args.ablation, "measurement": args.measurement,
              "config": common.config_record(common.bench_config(args, args.config)),
              "environment": common.environment(args, device), **summary}
    common.print_json(output)
    return output


if __name__ == "__main__":
    main()
