"""so101-deploy: the pick-101 seg+depth DrQ-v2 policy on a real SO-101 arm, as a dora-rs dataflow."""

from so101_deploy.core.gl import preload_for_osmesa as _preload_for_osmesa

__version__ = "0.1.0"

# Must run before anything imports mujoco: see gl.py (OSMesa + a later Triton import segfaults).
_preload_for_osmesa()
