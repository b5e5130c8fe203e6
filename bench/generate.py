"""Generation benchmark: fairseq's SequenceGenerator writing exactly 20 tokens (then end of sentence), greedy and
beam 5, for the issue's configurations and shapes, with model FLOPs and the fraction of the matmul peak.

    python -m bench.generate --threads 2
    python -m bench.generate --device cuda --dtype bf16
"""
import argparse
from typing import Dict, List, Optional

import torch
from fairseq.sequence_generator import SequenceGenerator

from bench import common

BEAMS = {"greedy": 1, "beam5": 5}


def make_generator(model, dictionary, beam: int, length: int) -> SequenceGenerator:
    """A generator that writes exactly ``length`` tokens: end of sentence is forbidden before, forced after."""
    return SequenceGenerator([model], dictionary, beam_size=beam, max_len_a=0, max_len_b=length, min_len=length)


def measure(args: argparse.Namespace, name: str, device: torch.device) -> Dict:
    config = common.bench_config(args, name)
    model, dictionary = common.build_model(config, device, args.no_channels_last, args.compile)
    net_input = common.make_batch(config, dictionary, device)["net_input"]
    # No parameter needs a gradient: FLOP counting under no_grad trips on leaves that require one.
    common.inference_model(model, net_input)
    net_input = {key: value for key, value in net_input.items() if key != "prev_output_tokens"}
    reference = common.REFERENCE[name] if is_reference_shape(args) else {}
    results = {"config": common.config_record(config), "new_tokens": config.target_tokens}
    for label, beam in BEAMS.items():
        generator = make_generator(model, dictionary, beam, config.target_tokens)

        def generate():
            with torch.no_grad(), common.autocast(device, args.dtype):
                return generator.generate([model], {"net_input": net_input}, bos_token=dictionary.bos())

        lengths = {len(hypos[0]["tokens"]) for hypos in generate()}
        if lengths != {config.target_tokens + 1}:
            raise RuntimeError(f"expected {config.target_tokens} tokens and end of sentence, got lengths {lengths}")
        common.reset_peak_memory(device)
        timing = common.timed_median(generate, args.steps, args.warmup, device)
        flops = common.count_flops(generate)
        results[label] = {"beam": beam, **timing, **common.peak_memory(device), "model_flops": flops}
        if f"{label}_s" in reference:
            results[label]["reference_s"] = reference[f"{label}_s"]
            results[label]["speedup"] = common.speedup(reference[f"{label}_s"], timing["median_s"])
    return results


def is_reference_shape(args: argparse.Namespace) -> bool:
    from bench.train_step import is_reference_shape as same_shapes
    return same_shapes(args)


def main(argv: Optional[List[str]] = None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(parser)
    return common.run("generate", parser.parse_args(argv), measure,
                      lambda result: [result[label] for label in BEAMS])


if __name__ == "__main__":
    main()
