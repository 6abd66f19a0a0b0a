"""Headless OpenGL for MuJoCo, and the one library-order rule it needs.

On a CPU machine MuJoCo renders through OSMesa (``MUJOCO_GL=osmesa``), whose llvmpipe loads its own
LLVM.  If Triton (pulled in by torch/torchvision, e.g. when timm is imported) is loaded *after*
that -- and ``import mujoco`` with ``MUJOCO_GL=osmesa`` is enough to load it -- the process
segfaults inside Triton's import; loaded before, both work.  ``so101_deploy.tools``
(the commands, which may load both) and the test suite call :func:`preload_for_osmesa` first (~0.3 s
on machines that render through OSMesa); nodes load at most one of the two and stay free of Triton.
Other code that imports mujoco and then torch must call it before mujoco is imported.
"""

from __future__ import annotations

import importlib.util
import os
import sys


def will_use_osmesa() -> bool:
    gl = os.environ.get("MUJOCO_GL")
    if gl:
        return gl == "osmesa"
    # no MUJOCO_GL and no display on Linux: the project falls back to OSMesa
    return sys.platform.startswith("linux") and not os.environ.get("DISPLAY")


def preload_for_osmesa() -> None:
    """Load Triton (when installed) before OSMesa's LLVM, so a later torch/timm import cannot crash."""
    if "mujoco" in sys.modules:  # too late: importing Triton now is what crashes; leave it to torch
        return
    if will_use_osmesa() and importlib.util.find_spec("triton") is not None:
        import triton  # noqa: F401


def headless_gl_fallback() -> None:
    """mujoco picks its GL backend from MUJOCO_GL when it is imported; GLFW (the default) needs a
    display.  On a headless Linux machine with MUJOCO_GL unset, switch the Renderer to OSMesa."""
    if os.environ.get("MUJOCO_GL") or os.environ.get("DISPLAY") or not sys.platform.startswith("linux"):
        return
    from mujoco import gl_context

    if getattr(gl_context.GLContext, "__module__", "").startswith("mujoco.glfw"):
        from mujoco.osmesa import GLContext  # sets PYOPENGL_PLATFORM=osmesa when unset

        gl_context.GLContext = GLContext


def no_rendering_here() -> None:
    """For a process that uses MuJoCo for kinematics only (controller, observation, monitor): with
    ``MUJOCO_GL=osmesa`` in the environment (the project's headless default, inherited from the shell),
    ``import mujoco`` loads OSMesa and its LLVM, ~55 MB of memory such a node never uses.  Call it first,
    before anything imports mujoco; it changes only this process's environment, and only in a process
    dora started (a test importing the node's module keeps its renderer)."""
    if "mujoco" not in sys.modules and "DORA_NODE_CONFIG" in os.environ:
        os.environ.pop("MUJOCO_GL", None)
