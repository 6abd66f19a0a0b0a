"""Shared pytest fixtures.  Keep each fixture small and documented; add new ones below the others."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from so101_deploy.core.gl import preload_for_osmesa

preload_for_osmesa()  # first: Triton before any mujoco/OSMesa import (see shared/so101_deploy/core/gl.py)

REPO_ROOT = Path(__file__).resolve().parent.parent
RECORDINGS_DIR = REPO_ROOT / "tests" / "data" / "recordings"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (where the dataflow YAML files are)."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def venv_bin() -> Path:
    """The folder of this interpreter (the venv's bin, holding `dora` and `so101-deploy`)."""
    return Path(sys.executable).parent


@pytest.fixture(scope="session")
def generated_video(tmp_path_factory) -> Path:
    """The project's generated scene as a 30-frame 640x480 mp4 (read-only: copy it to modify it)."""
    from so101_deploy.sim.synthetic import write_video

    return write_video(tmp_path_factory.mktemp("video") / "scene.mp4", frames=30, seed=0)


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """A fresh folder of 8 generated 640x480 PNG frames (frame_00000.png ...), safe to modify."""
    from so101_deploy.sim.synthetic import write_image_folder

    folder = tmp_path / "frames"
    write_image_folder(folder, frames=8, seed=0)
    return folder


@pytest.fixture(scope="session")
def camera_recording() -> Path:
    """The committed recording of camera `image` messages from a real replay run (tests/data/recordings)."""
    path = RECORDINGS_DIR / "camera_replay" / "image.arrow"
    if not path.exists():
        pytest.fail(f"{path} is missing; regenerate it with `python tests/data/make_recordings.py`")
    return path
