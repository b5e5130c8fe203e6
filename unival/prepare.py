"""``unival prepare DATASET``: converts a benchmark's public annotation files into the TSV files the tasks read
(one sub-command per dataset) and prints the rows written to each file."""
import argparse
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, List, Tuple

from unival.data_utils.prepare.common import MediaOptions, Written, staged_outputs

DESCRIPTION = """Converts the public annotation files of a benchmark into the TSV files of its task (tab-separated,
no header, one sample a line), written atomically into --out. Media columns hold paths relative to the media
folder (--media-dir, which the task's --media-dir must name too), or base64 with --embed-images. Every input
path is an option; run `unival prepare DATASET --help` for the files each dataset needs. An input without any
record is an error; an output left with no rows (every row's media missing, every question dropped...) is still
written, so that no older file of that name stays, and a warning says why it is empty."""


@dataclass(frozen=True)
class Dataset:
    help: str
    outputs: str
    images: bool  # whether --embed-images applies
    add_arguments: Callable[[argparse.ArgumentParser], None]
    convert: Callable[[argparse.Namespace, MediaOptions], List[Written]]


# ---------------------------------------------------------------------------------------------------------------
# One function pair per dataset: its options, and the converter call


def coco_caption_arguments(parser):
    parser.add_argument("--karpathy-json", required=True,
                        help="Karpathy's dataset_coco.json (images with split train/restval/val/test)")
    parser.add_argument("--exclude-restval", action="store_true",
                        help="train on Karpathy's train split only, without restval (the rest of COCO val2014)")


def coco_caption_convert(args, media):
    from unival.data_utils.prepare.coco_caption import prepare_coco_caption
    return prepare_coco_caption(args.karpathy_json, args.out, media, include_restval=not args.exclude_restval)


def vqav2_arguments(parser):
    from unival.data_utils.prepare.vqa import DEFAULT_NUM_ANSWERS
    parser.add_argument("--train-questions", required=True, help="v2_OpenEnded_mscoco_train2014_questions.json")
    parser.add_argument("--train-annotations", required=True, help="v2_mscoco_train2014_annotations.json")
    parser.add_argument("--val-questions", help="v2_OpenEnded_mscoco_val2014_questions.json (-> vqa_valid.tsv)")
    parser.add_argument("--val-annotations", help="v2_mscoco_val2014_annotations.json")
    parser.add_argument("--test-questions",
                        help="v2_OpenEnded_mscoco_test2015_questions.json or the test-dev file (-> vqa_test.tsv, "
                             "empty answers column)")
    parser.add_argument("--num-answers", type=int, default=DEFAULT_NUM_ANSWERS,
                        help="size of the answer list: the most frequent consensus answers of the training split "
                             "(default: %(default)s)")


def vqav2_convert(args, media):
    from unival.data_utils.prepare.vqa import prepare_vqav2
    return prepare_vqav2(args.out, args.train_questions, args.train_annotations, args.val_questions,
                         args.val_annotations, args.test_questions, args.num_answers, media)


def refcoco_arguments(parser):
    from unival.data_utils.prepare.refcoco import DEFAULT_IMAGE_FOLDER, DEFAULT_PREFIX
    parser.add_argument("--refs", required=True, help="refs(unc).p (RefCOCO, RefCOCO+) or refs(umd).p (RefCOCOg)")
    parser.add_argument("--instances", required=True, help="the instances.json beside the refs file")
    parser.add_argument("--prefix", default=DEFAULT_PREFIX,
                        help="output files are <out>/<prefix>_<split>.tsv (the task's --tsv-prefix; "
                             "default: %(default)s)")
    parser.add_argument("--image-folder", default=DEFAULT_IMAGE_FOLDER,
                        help="folder of the COCO images under --media-dir (default: %(default)s)")
    parser.add_argument("--clip-boxes", action="store_true",
                        help="clip boxes that reach outside their image instead of stopping with an error")


def refcoco_convert(args, media):
    from unival.data_utils.prepare.refcoco import prepare_refcoco
    return prepare_refcoco(args.refs, args.instances, args.out, args.prefix, args.image_folder, args.clip_boxes,
                           media)


def snli_ve_arguments(parser):
    from unival.data_utils.prepare.snli_ve import DEFAULT_IMAGE_FOLDER
    parser.add_argument("--train", help="snli_ve_train.jsonl")
    parser.add_argument("--dev", help="snli_ve_dev.jsonl (-> snli_ve_valid.tsv)")
    parser.add_argument("--test", help="snli_ve_test.jsonl")
    parser.add_argument("--image-folder", default=DEFAULT_IMAGE_FOLDER,
                        help="folder of the Flickr30k images under --media-dir (default: %(default)s)")


def snli_ve_convert(args, media):
    from unival.data_utils.prepare.snli_ve import prepare_snli_ve
    return prepare_snli_ve(args.out, args.train, args.dev, args.test, args.image_folder, media)


def msrvtt_caption_arguments(parser):
    from unival.data_utils.prepare.msrvtt import DEFAULT_EXTENSION, DEFAULT_VIDEO_FOLDER
    parser.add_argument("--annotations", nargs="+", required=True,
                        help="train_val_videodatainfo.json and test_videodatainfo.json (or one file with all "
                             "three splits)")
    parser.add_argument("--video-folder", default=DEFAULT_VIDEO_FOLDER,
                        help="folder of the videos under --media-dir (default: %(default)s)")
    parser.add_argument("--video-extension", default=DEFAULT_EXTENSION,
                        help="extension of the video files (default: %(default)s)")


def msrvtt_caption_convert(args, media):
    from unival.data_utils.prepare.msrvtt import prepare_msrvtt_caption
    return prepare_msrvtt_caption(args.annotations, args.out, args.video_folder, args.video_extension, media)


def video_qa_arguments(dataset: str):
    def add(parser):
        from unival.data_utils.prepare.video_qa import VIDEO_DEFAULTS
        folder, extension = VIDEO_DEFAULTS[dataset]
        parser.add_argument("--train", required=True, help="train_qa.json (also gives answers.txt)")
        parser.add_argument("--val", help="val_qa.json (-> video_vqa_valid.tsv)")
        parser.add_argument("--test", help="test_qa.json")
        if dataset == "msvd":
            parser.add_argument("--youtube-mapping", required=True,
                                help="youtube_mapping.txt: lines '<youtube clip name> vid<id>'")
        parser.add_argument("--video-folder", default=folder,
                            help="folder of the videos under --media-dir (default: %(default)s)")
        parser.add_argument("--video-extension", default=extension,
                            help="extension of the video files (default: %(default)s)")
        parser.add_argument("--num-answers", type=int,
                            help="keep only the N most frequent training answers in answers.txt (default: all)")
    return add


def video_qa_convert(dataset: str):
    def convert(args, media):
        from unival.data_utils.prepare.video_qa import prepare_video_qa
        return prepare_video_qa(dataset, args.out, args.train, args.val, args.test,
                                getattr(args, "youtube_mapping", None), args.video_folder, args.video_extension,
                                args.num_answers, media)
    return convert


def audiocaps_arguments(parser):
    from unival.data_utils.prepare.audio_caption import DEFAULT_AUDIOCAPS_PATTERN
    parser.add_argument("--train", help="train.csv (audiocap_id,youtube_id,start_time,caption)")
    parser.add_argument("--val", help="val.csv (-> audio_caption_valid.tsv)")
    parser.add_argument("--test", help="test.csv")
    parser.add_argument("--audio-pattern", default=DEFAULT_AUDIOCAPS_PATTERN,
                        help="path of a clip under --media-dir, from the fields {youtube_id}, {start_time}, "
                             "{audiocap_id} and {split} (train, val or test), e.g. '{split}/{audiocap_id}.wav' "
                             "(default: %(default)s)")


def audiocaps_convert(args, media):
    from unival.data_utils.prepare.audio_caption import prepare_audiocaps
    return prepare_audiocaps(args.out, args.train, args.val, args.test, args.audio_pattern, media)


def clotho_arguments(parser):
    parser.add_argument("--development", help="clotho_captions_development.csv (-> audio_caption_train.tsv)")
    parser.add_argument("--validation", help="clotho_captions_validation.csv (-> audio_caption_valid.tsv)")
    parser.add_argument("--evaluation", help="clotho_captions_evaluation.csv (-> audio_caption_test.tsv)")
    parser.add_argument("--audio-folders", nargs=3, metavar=("DEVELOPMENT", "VALIDATION", "EVALUATION"),
                        default=["development", "validation", "evaluation"],
                        help="folders of the audio files of each split under --media-dir (default: %(default)s)")


def clotho_convert(args, media):
    from unival.data_utils.prepare.audio_caption import CLOTHO_SPLITS, prepare_clotho
    folders = dict(zip(CLOTHO_SPLITS.values(), args.audio_folders))
    return prepare_clotho(args.out, args.development, args.validation, args.evaluation, folders, media)


def pretrain_arguments(parser):
    from unival.data_utils.prepare.pretrain import INPUT_KINDS
    parser.add_argument("--stream", required=True,
                        help="name of the stream (image, video, audio...; letters, digits and underscores): the "
                             "file is <out>/<stream>_<split>.tsv")
    parser.add_argument("--split", default="train", help="split name of the file (default: %(default)s)")
    inputs = parser.add_argument_group(
        "inputs", "per-task TSV files, one or more after each option; a stream may mix kinds. Rows are written "
                  "in the order of the command line, their ids prefixed by their file's stem (the dataset name, "
                  "so two inputs need different file names). --embed-images embeds the images only: video and "
                  "audio rows keep their paths.")
    for kind, spec in INPUT_KINDS.items():
        inputs.add_argument(f"--{kind}", dest="inputs", action="extend", nargs="+", metavar="TSV",
                            type=partial(tagged_input, kind),
                            help=f"rows {', '.join(spec.columns)} -> type {spec.type}")
    inputs.add_argument(f"--{MEDIA_PREFIX}", dest="inputs", action="append", metavar="FOLDER",
                        type=partial(tagged_input, MEDIA_PREFIX),
                        help="folder put before the media paths of the inputs named after it on the command line "
                             "(until the next --media-prefix; '' for none), so that the media of datasets "
                             "prepared with different --media-dir all resolve under one media folder: with "
                             "--media-prefix coco, images/1.jpg becomes coco/images/1.jpg (base64 images stay as "
                             "they are). --media-dir, to check or embed, then names the folder holding coco/")


MEDIA_PREFIX = "media-prefix"


def tagged_input(kind: str, path: str) -> Tuple[str, str]:
    """(kind, path): every input option adds to one list, so rows keep the order of the command line."""
    return kind, path


def prefixed_inputs(tagged: List[Tuple[str, str]]) -> List[Tuple[str, str, str]]:
    """(kind, path, media prefix) of each input: the --media-prefix given last before it."""
    inputs, prefix, since = [], "", None
    for kind, value in tagged:
        if kind == MEDIA_PREFIX:
            if since is not None:
                raise ValueError(f"--media-prefix {since!r} is followed by another --media-prefix before any "
                                 "input: it would apply to none")
            prefix, since = value, value
        else:
            inputs.append((kind, value, prefix))
            since = None
    if since is not None:
        raise ValueError(f"--media-prefix {since!r} comes after the last input: it applies to the inputs named "
                         "after it")
    return inputs


def pretrain_convert(args, media):
    from unival.data_utils.prepare.pretrain import prepare_pretraining
    return prepare_pretraining(args.out, args.stream, args.split, prefixed_inputs(args.inputs or []), media)


DATASETS = {
    "coco-caption": Dataset("COCO captions, Karpathy splits", "caption_{train,valid,test}.tsv", True,
                            coco_caption_arguments, coco_caption_convert),
    "vqav2": Dataset("VQAv2 questions and answers", "vqa_{train,valid,test}.tsv and answers.txt", True,
                     vqav2_arguments, vqav2_convert),
    "refcoco": Dataset("RefCOCO, RefCOCO+ or RefCOCOg referring expressions",
                       "<prefix>_{train,valid,testA,testB}.tsv (RefCOCOg: <prefix>_{train,valid,test}.tsv)", True,
                       refcoco_arguments, refcoco_convert),
    "snli-ve": Dataset("SNLI-VE visual entailment", "snli_ve_{train,valid,test}.tsv", True,
                       snli_ve_arguments, snli_ve_convert),
    "msrvtt-caption": Dataset("MSR-VTT video captions", "video_caption_{train,valid,test}.tsv", False,
                              msrvtt_caption_arguments, msrvtt_caption_convert),
    "msrvtt-qa": Dataset("MSRVTT-QA video question answering", "video_vqa_{train,valid,test}.tsv and answers.txt",
                         False, video_qa_arguments("msrvtt"), video_qa_convert("msrvtt")),
    "msvd-qa": Dataset("MSVD-QA video question answering", "video_vqa_{train,valid,test}.tsv and answers.txt",
                       False, video_qa_arguments("msvd"), video_qa_convert("msvd")),
    "audiocaps": Dataset("AudioCaps audio captions", "audio_caption_{train,valid,test}.tsv", False,
                         audiocaps_arguments, audiocaps_convert),
    "clotho": Dataset("Clotho audio captions", "audio_caption_{train,valid,test}.tsv", False,
                      clotho_arguments, clotho_convert),
    "pretrain": Dataset("pretraining streams for the unify task", "<stream>_<split>.tsv", True,
                        pretrain_arguments, pretrain_convert),
}


# ---------------------------------------------------------------------------------------------------------------
# The command


def add_common_arguments(parser, images: bool) -> None:
    parser.add_argument("--out", required=True, help="folder to write the TSV files into (created if needed)")
    media = parser.add_argument_group("media")
    media.add_argument("--media-dir", help="folder the media paths of the rows are relative to (needed to check "
                                           "or embed media)")
    media.add_argument("--check-media", action="store_true",
                       help="check that every media file exists under --media-dir and is not empty (an error lists "
                            "the first missing or empty)")
    media.add_argument("--skip-missing-media", action="store_true",
                       help="check the media and leave out (and count) rows whose file is missing or empty")
    if images:
        media.add_argument("--embed-images", action="store_true",
                           help="store each image as base64 of its file (the OFA format) instead of its path")


def add_arguments(parser) -> None:
    parser.description = DESCRIPTION
    sub = parser.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    for name, dataset in DATASETS.items():
        dataset_parser = sub.add_parser(name, help=f"{dataset.help} -> {dataset.outputs}",
                                        description=f"{dataset.help}: writes {dataset.outputs} into --out.")
        dataset.add_arguments(dataset_parser)
        add_common_arguments(dataset_parser, dataset.images)


def media_options(args) -> MediaOptions:
    return MediaOptions(media_dir=args.media_dir, check=args.check_media, skip_missing=args.skip_missing_media,
                        embed=getattr(args, "embed_images", False))


def run(args) -> int:
    try:
        if Path(args.out).exists() and not Path(args.out).is_dir():
            raise NotADirectoryError(f"--out {args.out} is a file: it names the folder to write the TSV files into")
        with staged_outputs():
            written = DATASETS[args.dataset].convert(args, media_options(args))
    except (ValueError, OSError) as error:
        print(f"unival prepare {args.dataset}: error: {error}", file=sys.stderr)
        return 2
    for item in written:
        print(item.summary())
        if item.warning():
            print(f"unival prepare {args.dataset}: {item.warning()}", file=sys.stderr)
    return 0
