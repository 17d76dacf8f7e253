"""Shared test setup: offline model hubs, headless rendering, and paths to the shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Set before any test module imports transformers or mujoco.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
# The shared fixtures sit beside the checkout (../shared/fixtures); RT2_FIXTURES points elsewhere.
SHARED_FIXTURES = Path(os.environ.get("RT2_FIXTURES", REPO_ROOT.parent / "shared" / "fixtures"))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def realsense_bag() -> Path:
    """The real D435 recording from ../shared/fixtures (skips with the reason when absent)."""
    path = SHARED_FIXTURES / "realsense" / "d435_single_depth_color_640x480.bag"
    if not path.exists():
        pytest.skip(
            f"real RealSense fixture not found at {path} (see ../shared/fixtures/realsense/README.md)"
        )
    return path
