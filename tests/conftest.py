"""Shared fixtures: the real data folders (fetched by `make test`) and seeded RNG."""

from pathlib import Path

import pytest
import torch

DATA = Path(__file__).resolve().parent.parent / "data"


def fetched(name: str) -> Path:
    """The folder of a fetched source, or skip the test saying how to fetch it."""
    path = DATA / name
    if not (path / ".fetched").is_file():
        pytest.skip(f"data/{name} is not fetched; run `python -m minitransformers fetch {name}` (make test does)")
    return path


@pytest.fixture
def minilm_dir() -> Path:
    return fetched("minilm")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
