"""Runs every benchmark, each configuration in its own process (so peak memory is that configuration's alone),
writes the merged JSON and prints the Performance table of the README.

    python -m bench.run_all --threads 2 --out bench_results.json
    python -m bench.run_all --device cuda --dtype bf16 --out bench_cuda.json
    python -m bench.run_all --malloc glibc         # the C library's malloc even where tcmalloc is installed

Each process uses the memory allocator of ``--malloc`` (``unival.allocator``: by default tcmalloc, else jemalloc,
where the system has them, as ``unival train`` does).
"""
import argparse
import json
import subprocess
import sys
from typing import Dict, List, Optional

from bench import common
from unival import allocator
from unival.tasks.base import refuse_emulated_bfloat16

GIB = 1024 ** 3


def run_script(module: str, arguments: List[str], env: Optional[Dict[str, str]] = None) -> Dict:
    """The JSON a benchmark prints as ``python -m module arguments`` (its last top-level JSON object); ``env``:
    the process's environment (default: this one's)."""
    completed = subprocess.run([sys.executable, "-m", module, *arguments], capture_output=True, text=True,
                               env=env)
    if completed.returncode:
        raise RuntimeError(f"{module} {' '.join(arguments)} failed with exit status {completed.returncode} "
                           f"(negative: killed by that signal, e.g. -9 when out of memory):\n"
                           f"{completed.stderr[-4000:]}")
    start = completed.stdout.find("{\n")
    if start < 0:
        raise RuntimeError(f"{module} printed no JSON:\n{completed.stdout[-2000:]}")
    return json.loads(completed.stdout[start:])


def model_arguments(args: argparse.Namespace) -> List[str]:
    arguments = ["--threads", str(args.threads), "--device", args.device, "--dtype", args.dtype,
                 "--steps", str(args.steps), "--warmup", str(args.warmup)]
    if args.no_channels_last:
        arguments.append("--no-channels-last")
    if args.compile:
        arguments.append("--compile")
    if args.release_freed_memory:
        arguments.append("--release-freed-memory")
    if args.allow_emulated_bf16:
        arguments.append("--allow-emulated-bf16")
    return arguments


def seconds(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}"


def ratio(value: Optional[float], digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def fractions(row: Dict) -> str:
    """'median-time fraction (best-repetition fraction)' of the matmul peak."""
    return f"{ratio(row.get('fraction_of_peak'), 3)} ({ratio(row.get('fraction_of_peak_best'), 3)})"


def render_table(results: Dict) -> str:
    """Markdown table: per configuration and measurement, our median seconds, the reference, the speedup,
    the fraction of the matmul peak and the peak memory."""
    lines = ["| configuration | measurement | ours (s, median) | ours (s, best) | original (s) | speedup "
             "| fraction of peak: median (best) | peak memory (GiB) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, train in results.get("train_step", {}).items():
        memory = train.get("peak_rss_bytes", train.get("peak_cuda_allocated_bytes"))
        reference_memory = train.get("reference_peak_rss_bytes")
        memory_text = "-" if memory is None else f"{memory / GIB:.2f}"
        if reference_memory:
            memory_text += f" (original {reference_memory / GIB:.2f})"
        lines.append(f"| {name} | training step | {seconds(train['median_s'])} | {seconds(train['min_s'])} "
                     f"| {seconds(train.get('reference_s'))} | {ratio(train.get('speedup'))} "
                     f"| {fractions(train)} | {memory_text} |")
        generation = results.get("generate", {}).get(name, {})
        for label in ("greedy", "beam5"):
            if label in generation:
                row = generation[label]
                lines.append(f"| {name} | {label} (20 tokens) | {seconds(row['median_s'])} "
                             f"| {seconds(row['min_s'])} | {seconds(row.get('reference_s'))} "
                             f"| {ratio(row.get('speedup'))} | {fractions(row)} | - |")
    loading = results.get("data_loading", {})
    for modality, row in loading.items():
        unit = f"{row['items_per_s']:.1f} {modality}s/s per worker"
        if modality == "video":
            unit += f" ({row['frames_per_s']:.0f} frames/s)"
        lines.append(f"| data | {modality} decode + transform | {unit} | | | | | |")
    return "\n".join(lines)


def save(results: Dict, path: Optional[str]) -> None:
    if path:
        with open(path, "w") as file:
            file.write(json.dumps(results, indent=2) + "\n")


def main(argv: Optional[List[str]] = None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads of the model benchmarks")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", choices=sorted(common.DTYPES), default="fp32", help="fp32, bf16 or fp16")
    parser.add_argument("--steps", type=int, default=20, help="timed repetitions (the median is reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed repetitions first")
    parser.add_argument("--config", choices=sorted(common.CONFIGS), nargs="+", default=["tiny", "base"],
                        help="model configurations")
    parser.add_argument("--no-channels-last", action="store_true", help="NCHW images into the image encoder")
    parser.add_argument("--compile", action="store_true", help="torch.compile the transformer layers")
    parser.add_argument("--release-freed-memory", action="store_true",
                        help="glibc's default allocation: freed memory goes back to the system")
    parser.add_argument("--malloc", default=allocator.default_choice(),
                        help="memory allocator of the benchmark processes: auto (tcmalloc, else jemalloc, where "
                             "installed, else glibc's), tcmalloc, jemalloc, glibc or a library's path "
                             "(default: $UNIVAL_MALLOC, else auto)")
    parser.add_argument("--allow-emulated-bf16", action="store_true",
                        help="--dtype bf16 on a CPU without bfloat16 instructions (emulated, tens of times slower)")
    parser.add_argument("--skip-data", action="store_true", help="skip the data-loading benchmark")
    parser.add_argument("--out", help="file for the merged JSON")
    args = parser.parse_args(argv)
    if args.device == "cpu" and args.dtype == "bf16" and not args.allow_emulated_bf16:
        try:  # before the matmul peak, which alone would take minutes of emulated products
            refuse_emulated_bfloat16("--dtype bf16", "--allow-emulated-bf16")
        except ValueError as error:
            parser.error(str(error))
    try:
        env, description = allocator.child_environment(args.malloc)
    except ValueError as error:
        parser.error(str(error))
    print(f"[bench] {description}", file=sys.stderr, flush=True)
    base = model_arguments(args)
    results = {"matmul_peak": run_script("bench.matmul_peak", ["--threads", str(args.threads), "--device",
                                                               args.device, "--dtype", args.dtype], env)}
    for benchmark in ("train_step", "generate"):
        results[benchmark] = {}
        for name in args.config:
            output = run_script(f"bench.{benchmark}", [*base, "--config", name], env)
            results[benchmark][name] = output["results"][name]
            if isinstance(output.get("matmul_peak"), dict):  # the peak this process's fractions are against
                results[benchmark][name]["matmul_peak_flops_per_s"] = output["matmul_peak"]["flops_per_s"]
            results.setdefault("environment", output["environment"])
            save(results, args.out)  # a later failure keeps what was measured
    if not args.skip_data:
        results["data_loading"] = run_script("bench.data_loading", [], env)["results"]
    save(results, args.out)
    print(describe_machine(results))
    print(render_table(results))
    return results


def describe_machine(results: Dict) -> str:
    """One line on where the figures were taken: the processor and the range of the run's matmul peaks."""
    env = results.get("environment", {})
    where = env.get("gpu") or " ".join(str(part) for part in (env.get("cpu"), env.get("cpu_capability")) if part)
    if not env.get("gpu") and env.get("cpu_linear"):
        where += f", linear layers by {'oneDNN' if env['cpu_linear'] == 'onednn' else 'the BLAS'}"
    peaks = [row["matmul_peak_flops_per_s"] for benchmark in ("train_step", "generate")
             for row in results.get(benchmark, {}).values() if "matmul_peak_flops_per_s" in row]
    peaks.append((results.get("matmul_peak") or {}).get("flops_per_s", 0))
    peak = f"matmul peak {min(peaks) / 1e9:.0f}-{max(peaks) / 1e9:.0f} GFLOP/s" if max(peaks) else "no matmul peak"
    return (f"{where or 'unknown machine'}, {env.get('threads', '?')} threads, {env.get('dtype', '?')}, allocator "
            f"{env.get('allocator', '?')}: {peak}")


if __name__ == "__main__":
    main()
