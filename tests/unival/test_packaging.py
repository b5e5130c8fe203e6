"""The installed layout: a wheel holds everything under the `unival` namespace, configs included, and the
plugin registers itself when fairseq imports it as a --user-dir."""
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.e2e
def test_wheel_maps_everything_under_the_unival_namespace(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(tmp_path), str(REPO)], check=True, capture_output=True, timeout=300)
    wheel = next(tmp_path.glob("unival-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"unival"}
    for expected in ("unival/models/unival.py", "unival/tasks/caption.py", "unival/data_utils/tsv.py",
                     "unival/criterions/adjust_label_smoothed_cross_entropy.py", "unival/configs/caption/demo.yaml"):
        assert expected in names


def test_importing_the_plugin_registers_model_task_and_criterion():
    from fairseq.criterions import CRITERION_REGISTRY
    from fairseq.models import ARCH_MODEL_REGISTRY, MODEL_REGISTRY
    from fairseq.tasks import TASK_REGISTRY

    import unival  # noqa: F401

    assert "unival" in MODEL_REGISTRY
    assert {"unival_tiny", "unival_base", "unival_large"} <= set(ARCH_MODEL_REGISTRY)
    assert "caption" in TASK_REGISTRY
    assert "adjust_label_smoothed_cross_entropy" in CRITERION_REGISTRY


def test_the_command_line_starts_without_fairseqs_import_noise():
    """fairseq's import warns that torch.jit.script is deprecated and, without tensorboardX, asks for it: neither
    reaches a `unival` command's output (the filter is scoped to that import: later FutureWarnings still show)."""
    result = subprocess.run([sys.executable, "-c", "import warnings, unival; warnings.warn('later', FutureWarning)"],
                            capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "jit.script" not in result.stderr and "tensorboardX" not in result.stderr
    assert "FutureWarning: later" in result.stderr
