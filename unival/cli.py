"""The ``unival`` command: one entry with a subcommand per job (demo, evaluate, convert, ...)."""
import argparse
import importlib
import sys

# subcommand -> (module, one-line help). Each module defines ``add_arguments(parser)`` and ``run(args)``.
SUBCOMMANDS = {
    "demo": ("unival.demo", "generate the demo corpus, train unival_tiny on it and compare before/after"),
    "make-demo-data": ("unival.demo_data_cli", "write the deterministic demo corpus (images, videos, audio)"),
    "train": ("unival.train", "run fairseq-train with the options of a YAML config from configs/"),
    "evaluate": ("unival.evaluate", "score predictions (JSON or fairseq-generate output) against references"),
    "merge": ("unival.merge", "interpolate the weights of checkpoints finetuned from one model (model merging)"),
    "convert": ("unival.convert", "export a checkpoint (original UnIVAL or ours) to safetensors + JSON config"),
    "prepare": ("unival.prepare", "convert a benchmark's public annotation files into the TSV files of its task"),
}


def build_parser(argv) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unival", description="UnIVAL jobs: the demo, training from a YAML "
                                     "config, evaluation, model merging and checkpoint conversion.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        sub_parser.set_defaults(_module=module_name)
        # Modules are imported lazily so `unival --help` stays fast; their options are added on demand.
        if argv and argv[0] == name:
            importlib.import_module(module_name).add_arguments(sub_parser)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # Everything after `--` is passed through untouched (e.g. extra fairseq-train options of `unival train`).
    passthrough = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    args.passthrough = passthrough
    if args.command is None:
        parser.print_help()
        return 0
    module = importlib.import_module(args._module)
    return module.run(args) or 0


if __name__ == "__main__":
    sys.exit(main())
