"""``unival make-demo-data``: writes the deterministic demo corpus (shape scenes, moving shapes, synthetic
sounds) in the TSV formats of the tasks, and prints the files with their row counts."""
import sys
import time

from unival.data_utils import demo_corpus


def add_arguments(parser) -> None:
    parser.add_argument("--out", required=True,
                        help="folder to write into: new, empty, or a previous demo corpus (which is replaced)")
    parser.add_argument("--seed", type=int, default=0, help="the same seed writes byte-identical files")
    parser.add_argument("--image-format", choices=demo_corpus.IMAGE_FORMATS, default="base64",
                        help="image column: base64 of the PNG (the OFA format) or the path relative to --out")
    parser.add_argument("--image-size", type=int, default=demo_corpus.DEFAULT_IMAGE_SIZE,
                        help="side of the square images, in pixels")
    counts = dict(type=int, nargs=3, metavar=("TRAIN", "VALID", "TEST"))
    parser.add_argument("--num-images", default=list(demo_corpus.DEFAULT_NUM_IMAGES), **counts,
                        help="images per split")
    parser.add_argument("--num-videos", default=list(demo_corpus.DEFAULT_NUM_VIDEOS), **counts,
                        help="videos per split")
    parser.add_argument("--num-audios", default=list(demo_corpus.DEFAULT_NUM_AUDIOS), **counts,
                        help="audio clips per split")
    parser.add_argument("--sample-rate", type=int, default=demo_corpus.DEFAULT_SAMPLE_RATE,
                        help="audio sample rate in Hz")
    parser.add_argument("--modalities", nargs="+", choices=demo_corpus.MODALITIES,
                        default=list(demo_corpus.MODALITIES), help="which media (and their task files) to write")


def run(args) -> int:
    start = time.perf_counter()
    try:
        manifest = demo_corpus.write_demo_corpus(
            args.out, seed=args.seed, num_images=args.num_images, num_videos=args.num_videos,
            num_audios=args.num_audios, image_size=args.image_size, image_format=args.image_format,
            sample_rate=args.sample_rate, modalities=args.modalities)
    except (FileExistsError, NotADirectoryError, ValueError) as error:
        print(f"unival make-demo-data: error: {error}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    items = ", ".join(f"{sum(per_split.values())} {modality}s" for modality, per_split in manifest["items"].items())
    print(f"wrote the demo corpus (seed {manifest['seed']}: {items}) to {args.out} in {seconds:.1f} s")
    width = max(len(name) for name in manifest["counts"])
    for name, rows in sorted(manifest["counts"].items()):
        print(f"  {name:<{width}}  {rows:>6}")
    return 0
