"""Shared fixtures: the tiny checkpoints are built once per test session (seconds on CPU)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from scripts.build_tiny_model import write_checkpoint
from scripts.make_demo_dift_data import write_demo_data

ROOT = Path(__file__).resolve().parent.parent
# Keep DeepSpeed's JIT builds and the frame cache inside the project.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """A base Qwen2.5-VL-shaped random checkpoint (no latent tokens), as Qwen/Qwen2.5-VL-3B-Instruct."""
    return write_checkpoint(tmp_path_factory.mktemp("tiny-base"), preset="tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_latent(tmp_path_factory) -> Path:
    """A DIFT-ready random checkpoint: latent tokens added, latent config fields (latent_size 4)."""
    return write_checkpoint(tmp_path_factory.mktemp("tiny-latent"), preset="tiny", seed=0, latent=True)


@pytest.fixture(scope="session")
def tiny_latent_untied(tmp_path_factory) -> Path:
    """`tiny_latent` with a separate seeded random output head: its greedy outputs depend on the
    input (the tied one repeats the last input token for every prompt), which gives equality tests power."""
    return write_checkpoint(tmp_path_factory.mktemp("tiny-latent-untied"), preset="tiny", seed=0, latent=True,
                            untied=True)


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    """DIFT training data: four synthetic samples, two small frames each (the demo builder's data)."""
    return write_demo_data(tmp_path_factory.mktemp("dift-data"), num_samples=4, seed=0, num_frames=2, size=56)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module of small-op model workloads: on the shared 2-core machine,
    OpenMP threads spinning against other processes made them up to ten times slower. Restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _frame_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FOURDTHINKER_FRAME_CACHE", str(tmp_path / "frame_cache"))
