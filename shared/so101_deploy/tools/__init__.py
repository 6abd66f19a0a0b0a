"""tools: the ``so101-deploy`` command line and every command (demo, bench, doctor, infer, fixtures, replay,
monitor).  The top layer: nothing in the package imports it."""

from so101_deploy.core.gl import preload_for_osmesa as _preload_for_osmesa

# commands may import mujoco (OSMesa) and then torch/timm in one process: load Triton first (see core/gl.py).
# Only here: nodes that never load a model (servo, estop, controller, ...) stay free of Triton.
_preload_for_osmesa()
