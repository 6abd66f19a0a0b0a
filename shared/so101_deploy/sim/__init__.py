"""sim: the simulated SO-101 (MuJoCo scene of pick-101's lift task), the sim arm node's logic, the oracle
segmentation/disparity, the scripted policy and the generated test video.  Imports every layer below it."""

from so101_deploy.core.gl import preload_for_osmesa as _preload_for_osmesa

# the simulator may import mujoco (OSMesa) and then torch/timm in one process: load Triton first (see core/gl.py).
# Only here: nodes that never load a model (servo, estop, controller, ...) stay free of Triton.
_preload_for_osmesa()
