"""Per-episode variation of the simulated scene: the deployment's real-world conditions as knobs.

A :class:`SceneVariation` holds one amplitude per knob; 0 is training's nominal scene.  Each episode,
:meth:`SceneVariator.apply` restores the nominal model and then draws every knob uniformly within
+- its amplitude from a seeded ``numpy.random.Generator``:

- ``camera_pos_m`` (m): offset of the wrist camera's position, each axis of the parent body
  (``gripper``) frame independently, added to the nominal ``cam_pos``.
- ``camera_rot_rad`` (rad): a rotation vector, each component independently, about the camera's
  own axes (x right, y up, z backwards, MuJoCo's camera frame) applied after the nominal
  orientation: ``cam_quat = nominal * exp(rotvec)``.
- ``light_frac`` (fraction): intensity.  Every light's diffuse+specular colour and its ambient
  colour, and the headlight's diffuse and ambient colour, are each multiplied by their own factor
  ``1 + u``, ``u`` in +- the amplitude (a term that is 0 nominally stays 0; the maximum, 0.9,
  keeps every factor positive).
- ``light_dir_rad`` (rad): each light's direction turned by a rotation vector, each world-frame
  component independently (the direction stays unit length).  The headlight follows the camera
  and has no direction to vary.
- ``light_pos_m`` (m): offset of each light's position, each world axis independently (for the
  scene's directional light this moves its shadow map only; for spot/point lights it matters).
- ``cube_rgb_frac`` (fraction of full scale): added to each of the cube's R, G, B independently,
  the result clipped to [0, 1]; alpha stays.  The nominal colour is the cube's material colour
  (0.9, 0.1, 0.1); it is written where the renderer takes it from (the material when only the cube
  uses it and the geom's rgba is MuJoCo's default, else the geom's rgba).
- ``cube_size_frac`` (fraction): the cube's half-size becomes ``nominal * (1 + u)`` on all three
  axes.  The cube is one geom that is both what collides and what is drawn, so the two cannot
  disagree; its bounding radius and box (used by collision broadphase) are updated with it.  The
  mass scales with the volume, ``(1 + u)**3`` (constant density: a differently sized cube in the
  deployment is the same kind of wooden block, not a 30 g one), and the inertia is the solid
  cube's ``m * (2 h)**2 / 6``; ``mj_setConst`` then recomputes what the compiler derives from
  them (subtree masses, inverse weights, ``stat.meaninertia``, ...).  The reset must put the cube's
  centre at ``z = cube_half_m`` (returned in the draw, and :func:`cube_half_m`) instead of the
  constant ``scene.CUBE_HALF_M`` so that it spawns resting on the floor (the cube's z in ``qpos0``,
  where ``mj_resetData`` puts it, is set to the new half-size as well).

Draws: when any amplitude is non-zero, one ``rng.uniform(-1, 1, n)`` vector of a fixed length (per
model) is drawn and each knob uses its own slice of it scaled by its amplitude, so for a given RNG
state a knob's draw does not depend on the other knobs' amplitudes (changing the lighting amplitude
does not move the camera), and doubling an amplitude doubles its offsets.  With all amplitudes 0
nothing is drawn and the model is not written at all.

The model's fields are written in place (the same ``MjModel`` a :class:`~so101_deploy.sim.sim_arm.SimArm`
and its renderers use); the pose-dependent fields (camera/light world poses) follow at the next
``mj_forward``/``mj_step``, which the reset does anyway.  Call :meth:`SceneVariator.apply` before
the reset places the cube.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import mujoco
import numpy as np

from so101_deploy.sim import scene as sim_scene

# field -> (maximum, unit/meaning for the error message)
LIMITS: dict[str, tuple[float, str]] = {
    "camera_pos_m": (0.05, "m"),
    "camera_rot_rad": (0.5, "rad"),
    "light_frac": (0.9, "(fraction of the nominal intensity)"),
    "light_dir_rad": (1.0, "rad"),
    "light_pos_m": (2.0, "m"),
    "cube_rgb_frac": (0.5, "(fraction of full colour scale)"),
    "cube_size_frac": (0.5, "(fraction of the nominal half-size)"),
}

_DEFAULT_RGBA = np.array([0.5, 0.5, 0.5, 1.0], dtype=np.float32)  # MuJoCo's default geom rgba


@dataclass(frozen=True)
class SceneVariation:
    """Amplitudes of the per-episode scene variation (all 0: training's nominal scene); see the
    module docstring for what each knob does."""

    camera_pos_m: float = 0.0
    camera_rot_rad: float = 0.0
    light_frac: float = 0.0
    light_dir_rad: float = 0.0
    light_pos_m: float = 0.0
    cube_rgb_frac: float = 0.0
    cube_size_frac: float = 0.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            hi, unit = LIMITS[f.name]
            expected = f"a finite amplitude in [0, {hi}] {unit}"
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise ValueError(f"scene variation {f.name}: expected {expected}, got {value!r}")
            value = float(value)
            if not math.isfinite(value) or value < 0.0 or value > hi:
                raise ValueError(f"scene variation {f.name}: expected {expected}, got {value!r}")
            object.__setattr__(self, f.name, value)

    @property
    def is_nominal(self) -> bool:
        return all(getattr(self, f.name) == 0.0 for f in dataclasses.fields(self))

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)

    def to_string(self) -> str:
        """The non-zero amplitudes in :func:`parse_variation`'s format ("" when nominal)."""
        return ",".join(f"{k}={v!r}" for k, v in self.as_dict().items() if v != 0.0)


def known_knobs() -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(SceneVariation))


def parse_variation(text: str) -> SceneVariation:
    """``"camera_pos_m=0.005,light_frac=0.3"`` -> SceneVariation (unnamed knobs stay 0; "" or
    whitespace is the nominal scene).  Raises a one-line ValueError naming the offending item."""
    if not isinstance(text, str):
        raise ValueError(f"scene variation: expected a string like 'camera_pos_m=0.005,light_frac=0.3', got {text!r}")
    known = known_knobs()
    values: dict[str, float] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, raw = item.partition("=")
        name, raw = name.strip(), raw.strip()
        if not sep or not name:
            raise ValueError(f"scene variation {item!r}: expected name=value (known names: {', '.join(known)})")
        if name not in known:
            raise ValueError(f"scene variation {name!r}: unknown name (known names: {', '.join(known)})")
        if name in values:
            raise ValueError(f"scene variation {name}: given twice")
        try:
            values[name] = float(raw)
        except ValueError:
            hi, unit = LIMITS[name]
            raise ValueError(f"scene variation {name}: expected a finite amplitude in [0, {hi}] {unit}, "
                             f"got {raw!r}") from None
    return SceneVariation(**values)


def cube_half_m(model: mujoco.MjModel) -> float:
    """The cube's current half-size (what the reset should put its centre's z at)."""
    return float(model.geom_size[model.geom(sim_scene.CUBE_GEOM).id][0])


def _quat_from_rotvec(v: np.ndarray) -> np.ndarray:
    """Unit quaternion (w, x, y, z) of the rotation vector ``v`` (axis * angle, rad)."""
    q = np.array([1.0, 0.0, 0.0, 0.0])
    angle = float(np.linalg.norm(v))
    if angle > 0.0:
        mujoco.mju_axisAngle2Quat(q, np.asarray(v, dtype=np.float64) / angle, angle)
    return q


def _rotate(v: np.ndarray, rotvec: np.ndarray) -> np.ndarray:
    out = np.zeros(3)
    mujoco.mju_rotVecQuat(out, np.asarray(v, dtype=np.float64), _quat_from_rotvec(rotvec))
    return out


class SceneVariator:
    """Varies one compiled scene model in place; remembers its nominal values at construction
    (build it on the nominal model, before any variation)."""

    def __init__(self, model: mujoco.MjModel):
        self.model = model
        try:
            self.cam_id = model.camera(sim_scene.CAMERA_NAME).id
            self.cube_geom = model.geom(sim_scene.CUBE_GEOM).id
            self.cube_body = model.body(sim_scene.CUBE_BODY).id
        except KeyError as e:
            raise ValueError(f"scene variation: the model lacks {e} (expected the pick-101 lift-cube scene "
                             f"of so101_deploy.sim.scene)") from None
        m = model
        if m.geom_type[self.cube_geom] != mujoco.mjtGeom.mjGEOM_BOX:
            raise ValueError(f"scene variation: geom {sim_scene.CUBE_GEOM!r} is not a box")
        if [g for g in range(m.ngeom) if m.geom_bodyid[g] == self.cube_body] != [self.cube_geom]:
            raise ValueError(f"scene variation: body {sim_scene.CUBE_BODY!r} must hold exactly the geom "
                             f"{sim_scene.CUBE_GEOM!r} (its mass and inertia are rescaled with it)")
        mat = int(m.geom_matid[self.cube_geom])
        # where the renderer takes the cube's colour from (MuJoCo uses the material's rgba when the
        # geom has a material and its own rgba is the default); write the material only if no other
        # geom shares it
        self.cube_mat = (mat if mat >= 0 and np.array_equal(m.geom_rgba[self.cube_geom], _DEFAULT_RGBA)
                         and int(np.sum(m.geom_matid == mat)) == 1 else -1)
        self.nlight = int(m.nlight)
        # the cube's free joint: its z in qpos0 (where mj_resetData puts the cube) follows the size
        jnt = int(m.body_jntadr[self.cube_body])
        free = jnt >= 0 and m.jnt_type[jnt] == mujoco.mjtJoint.mjJNT_FREE
        self.cube_z_qadr = int(m.jnt_qposadr[jnt]) + 2 if free else -1
        self._scratch = mujoco.MjData(m)
        self._dirty = False
        # the arrays that apply() writes, and those mj_setConst derives from them, as they are now
        self._nominal_arrays = {name: np.array(getattr(m, name), copy=True) for name in self._array_fields()}
        self._nominal_headlight = (m.vis.headlight.diffuse.copy(), m.vis.headlight.ambient.copy())
        self._nominal_stat = self._stat()

    _WRITTEN = ("cam_pos", "cam_quat", "light_pos", "light_dir", "light_diffuse", "light_ambient",
                "light_specular", "geom_rgba", "mat_rgba", "geom_size", "geom_rbound", "geom_aabb",
                "body_mass", "body_inertia", "qpos0")
    # what mj_setConst recomputes (mujoco 3.4: these change when the written fields do)
    _DERIVED = ("body_subtreemass", "body_invweight0", "dof_invweight0", "dof_M0", "dof_length", "cam_pos0",
                "cam_poscom0", "cam_mat0", "light_pos0", "light_dir0", "light_poscom0", "actuator_acc0",
                "tendon_invweight0")

    def _array_fields(self) -> list[str]:
        return [n for n in self._WRITTEN + self._DERIVED if hasattr(self.model, n)]

    def _stat(self) -> tuple:
        s = self.model.stat
        return (float(s.meaninertia), float(s.meanmass), float(s.meansize), float(s.extent), s.center.copy())

    # --- nominal --------------------------------------------------------------------------------

    def nominal(self) -> dict:
        """The nominal values in :meth:`apply`'s format (all offsets 0, all scales 1)."""
        a = self._nominal_arrays
        n = self.nlight
        return {
            "camera_pos_offset_m": [0.0] * 3,
            "camera_rot_offset_rad": [0.0] * 3,
            "camera_pos_m": a["cam_pos"][self.cam_id].tolist(),
            "camera_quat": a["cam_quat"][self.cam_id].tolist(),
            "light_diffuse_scale": [1.0] * n,
            "light_ambient_scale": [1.0] * n,
            "headlight_diffuse_scale": 1.0,
            "headlight_ambient_scale": 1.0,
            "light_dir_offset_rad": [[0.0] * 3 for _ in range(n)],
            "light_dir": a["light_dir"].tolist(),
            "light_pos_offset_m": [[0.0] * 3 for _ in range(n)],
            "light_pos_m": a["light_pos"].tolist(),
            "cube_rgba": self._nominal_rgba().tolist(),
            "cube_half_m": float(a["geom_size"][self.cube_geom][0]),
            "cube_mass_kg": float(a["body_mass"][self.cube_body]),
        }

    def _nominal_rgba(self) -> np.ndarray:
        a = self._nominal_arrays
        rgba = a["mat_rgba"][self.cube_mat] if self.cube_mat >= 0 else a["geom_rgba"][self.cube_geom]
        return rgba.astype(np.float64)

    def restore(self) -> None:
        """Put back the nominal model (bit-identical to what it was when the variator was built)."""
        if not self._dirty:
            return
        m = self.model
        for name in self._WRITTEN:
            if name in self._nominal_arrays:
                getattr(m, name)[...] = self._nominal_arrays[name]
        m.vis.headlight.diffuse[...] = self._nominal_headlight[0]
        m.vis.headlight.ambient[...] = self._nominal_headlight[1]
        # recompute everything mj_setConst derives (whatever this MuJoCo version derives), then put
        # back the remembered values of those known (bit-identical to the compiler's either way)
        mujoco.mj_setConst(m, self._scratch)
        for name in self._DERIVED:
            if name in self._nominal_arrays:
                getattr(m, name)[...] = self._nominal_arrays[name]
        meaninertia, meanmass, meansize, extent, center = self._nominal_stat
        m.stat.meaninertia, m.stat.meanmass, m.stat.meansize, m.stat.extent = meaninertia, meanmass, meansize, extent
        m.stat.center[...] = center
        self._dirty = False

    # --- variation ------------------------------------------------------------------------------

    def n_draws(self) -> int:
        """Length of the uniform vector one varied episode draws (fixed per model)."""
        return 3 + 3 + 2 * self.nlight + 2 + 3 * self.nlight + 3 * self.nlight + 3 + 1

    def apply(self, variation: SceneVariation, rng: np.random.Generator) -> dict:
        """Restore the nominal model, then draw and write one episode's scene; returns the values
        drawn (JSON-able: floats and lists of floats).  With a nominal ``variation`` nothing is drawn
        from ``rng`` and the model is left as it is (nominal)."""
        if not isinstance(variation, SceneVariation):
            raise TypeError(f"scene variation: expected a SceneVariation, got {type(variation).__name__}")
        self.restore()
        out = self.nominal()
        if variation.is_nominal:
            return out
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"scene variation: expected a numpy.random.Generator, got {type(rng).__name__}")
        u = rng.uniform(-1.0, 1.0, self.n_draws())
        slices = iter(np.split(u, np.cumsum([3, 3, self.nlight, self.nlight, 2, 3 * self.nlight,
                                             3 * self.nlight, 3])))
        u_cam_pos, u_cam_rot, u_ldiff, u_lamb, u_head, u_ldir, u_lpos, u_rgb, u_size = slices
        m, v, c = self.model, variation, self.cam_id
        self._dirty = True

        if v.camera_pos_m > 0.0:
            off = v.camera_pos_m * u_cam_pos
            m.cam_pos[c] = m.cam_pos[c] + off
            out["camera_pos_offset_m"] = off.tolist()
            out["camera_pos_m"] = m.cam_pos[c].tolist()
        if v.camera_rot_rad > 0.0:
            rotvec = v.camera_rot_rad * u_cam_rot
            q = np.zeros(4)
            mujoco.mju_mulQuat(q, np.array(m.cam_quat[c]), _quat_from_rotvec(rotvec))
            mujoco.mju_normalize4(q)
            m.cam_quat[c] = q
            out["camera_rot_offset_rad"] = rotvec.tolist()
            out["camera_quat"] = q.tolist()
        if v.light_frac > 0.0:
            diff = 1.0 + v.light_frac * u_ldiff
            amb = 1.0 + v.light_frac * u_lamb
            head = 1.0 + v.light_frac * u_head
            m.light_diffuse[...] = m.light_diffuse * diff[:, None]
            m.light_specular[...] = m.light_specular * diff[:, None]
            m.light_ambient[...] = m.light_ambient * amb[:, None]
            m.vis.headlight.diffuse[...] = m.vis.headlight.diffuse * head[0]
            m.vis.headlight.ambient[...] = m.vis.headlight.ambient * head[1]
            out["light_diffuse_scale"] = diff.tolist()
            out["light_ambient_scale"] = amb.tolist()
            out["headlight_diffuse_scale"] = float(head[0])
            out["headlight_ambient_scale"] = float(head[1])
        if v.light_dir_rad > 0.0:
            rotvecs = v.light_dir_rad * u_ldir.reshape(self.nlight, 3)
            for i in range(self.nlight):
                d = _rotate(m.light_dir[i], rotvecs[i])
                m.light_dir[i] = d / np.linalg.norm(d)
            out["light_dir_offset_rad"] = rotvecs.tolist()
            out["light_dir"] = m.light_dir.tolist()
        if v.light_pos_m > 0.0:
            offs = v.light_pos_m * u_lpos.reshape(self.nlight, 3)
            m.light_pos[...] = m.light_pos + offs
            out["light_pos_offset_m"] = offs.tolist()
            out["light_pos_m"] = m.light_pos.tolist()
        if v.cube_rgb_frac > 0.0:
            rgba = self._nominal_rgba()
            rgba[:3] = np.clip(rgba[:3] + v.cube_rgb_frac * u_rgb, 0.0, 1.0)
            if self.cube_mat >= 0:
                m.mat_rgba[self.cube_mat] = rgba
            else:
                m.geom_rgba[self.cube_geom] = rgba
            out["cube_rgba"] = np.asarray(rgba, dtype=np.float32).astype(np.float64).tolist()
        if v.cube_size_frac > 0.0:
            scale = 1.0 + v.cube_size_frac * float(u_size[0])
            g, b = self.cube_geom, self.cube_body
            half = self._nominal_arrays["geom_size"][g] * scale
            m.geom_size[g] = half
            m.geom_rbound[g] = float(np.linalg.norm(half))
            if hasattr(m, "geom_aabb"):  # (center, half-extents) in the geom frame
                m.geom_aabb[g] = np.concatenate([self._nominal_arrays["geom_aabb"][g][:3], half])
            mass = float(self._nominal_arrays["body_mass"][b]) * scale ** 3
            m.body_mass[b] = mass
            a, bb, cc = 2.0 * half  # solid box inertia about its centre
            m.body_inertia[b] = [mass * (bb ** 2 + cc ** 2) / 12.0, mass * (a ** 2 + cc ** 2) / 12.0,
                                 mass * (a ** 2 + bb ** 2) / 12.0]
            if self.cube_z_qadr >= 0:  # mj_resetData's cube rests on the floor too
                m.qpos0[self.cube_z_qadr] = float(half[2])
            out["cube_half_m"] = float(half[0])
            out["cube_mass_kg"] = mass
        mujoco.mj_setConst(m, self._scratch)  # camera/light reference poses, masses, meaninertia
        return out
