"""Test configuration: CPU, float32, few threads (the machine is shared), shared fixtures located once."""
import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(int(os.environ.get("UNIVAL_TEST_THREADS", "2")))
torch.set_default_dtype(torch.float32)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("UNIVAL_SHARED", REPO_ROOT.parent / "shared"))
FIXTURES = SHARED / "fixtures"


def pytest_configure(config):
    config.addinivalue_line("markers", "e2e: end-to-end runs of the real command line (slow, still run in CI)")
    config.addinivalue_line("markers", "parity: comparisons with outputs of the original UnIVAL code")


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        pytest.skip(f"shared fixtures not found at {FIXTURES} (set UNIVAL_SHARED to the folder holding fixtures/)")
    return FIXTURES


@pytest.fixture(scope="session")
def gpt2_bpe_dir(fixtures_dir) -> Path:
    path = fixtures_dir / "gpt2_bpe"
    if not (path / "dict.txt").is_file():
        pytest.skip(f"BART dict.txt not found in {path}")
    return path
