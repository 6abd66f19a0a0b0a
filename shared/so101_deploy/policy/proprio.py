"""The 18-value proprioception of one frame, as pick-101's ``low_dim_state`` (facts §2.4).

Per frame, in this order: joint positions (6, rad, the gripper as its joint angle), joint
velocities (6, rad/s), the ``gripperframe`` site position (3, m, world frame) and its roll, pitch,
yaw (3, rad) from the site rotation, through MuJoCo kinematics of the SO-101 MJCF
(:mod:`so101_deploy.arm.kinematics`).  No normalisation: training used none.

Velocities: the simulator read ``qvel``; on the arm they come from the positions of consecutive
``joint_state`` messages divided by the difference of their ``stamp_ns`` (``timestamps``, the
default), or from the message's own velocity row (``message``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from so101_deploy.core.messages import N_JOINTS, PROPRIO_DIM

VELOCITY_SOURCES = ("timestamps", "message")


class ProprioError(ValueError):
    """Joint data that cannot become proprioception (wrong shape, NaN, time going backwards)."""


def proprio_vector(kinematics, q_rad: np.ndarray, qvel_rad_s: np.ndarray) -> np.ndarray:
    """[q (6), qvel (6), gripperframe xyz (3), roll/pitch/yaw (3)] as float64 (18,)."""
    from so101_deploy.arm.kinematics import rpy_from_rotmat

    q = np.asarray(q_rad, np.float64)
    v = np.asarray(qvel_rad_s, np.float64)
    if q.shape != (N_JOINTS,) or v.shape != (N_JOINTS,):
        raise ProprioError(f"proprioception: expected joint positions and velocities of shape ({N_JOINTS},), "
                           f"got {q.shape} and {v.shape}")
    if not (np.isfinite(q).all() and np.isfinite(v).all()):
        raise ProprioError(f"proprioception: expected finite joints, got q={q.tolist()} qvel={v.tolist()}")
    pos_m, rot = kinematics.site_pose(q)
    out = np.concatenate([q, v, pos_m, rpy_from_rotmat(rot)])
    assert out.shape == (PROPRIO_DIM,)
    return out


@dataclass
class ProprioCounters:
    updates: int = 0
    out_of_order: int = 0  # joint states older than (or as old as) the last one: ignored
    gaps: int = 0  # consecutive states further apart than max_gap_s: velocity taken as 0


class Proprioception:
    """Keeps the latest joint state and turns it into the 18-value proprioception."""

    def __init__(self, kinematics=None, velocity_source: str = "timestamps", max_gap_s: float = 0.5):
        if velocity_source not in VELOCITY_SOURCES:
            raise ValueError(f"velocity source {velocity_source!r}: expected one of {VELOCITY_SOURCES}")
        if kinematics is None:
            from so101_deploy.arm.kinematics import Kinematics

            kinematics = Kinematics()
        self.kinematics = kinematics
        self.velocity_source = velocity_source
        self.max_gap_s = float(max_gap_s)
        self.counters = ProprioCounters()
        self._q: np.ndarray | None = None
        self._stamp_ns: int | None = None
        self._vector: np.ndarray | None = None

    def reset(self) -> None:
        """Forget the history (the next velocity from timestamps starts at zero)."""
        self._q = self._stamp_ns = self._vector = None

    @property
    def vector(self) -> np.ndarray | None:
        """The proprioception of the latest joint state, or None before the first one."""
        return self._vector

    def update(self, q_rad: np.ndarray, stamp_ns: int, qvel_rad_s: np.ndarray | None = None) -> np.ndarray | None:
        """Take one joint state; returns the new (18,) vector, or None if it was out of order."""
        q = np.asarray(q_rad, np.float64)
        if q.shape != (N_JOINTS,) or not np.isfinite(q).all():
            raise ProprioError(f"joint positions: expected {N_JOINTS} finite values (rad), got {q!r}")
        stamp_ns = int(stamp_ns)
        if self._stamp_ns is not None and stamp_ns <= self._stamp_ns:
            self.counters.out_of_order += 1
            return None
        if self.velocity_source == "message":
            if qvel_rad_s is None:
                raise ProprioError("velocity source 'message' needs the joint_state velocity row")
            vel = np.asarray(qvel_rad_s, np.float64)
        elif self._q is None:
            vel = np.zeros(N_JOINTS)
        else:
            dt_s = (stamp_ns - self._stamp_ns) * 1e-9
            if dt_s > self.max_gap_s:
                # a finite difference over a long gap says nothing about the present motion
                self.counters.gaps += 1
                vel = np.zeros(N_JOINTS)
            else:
                vel = (q - self._q) / dt_s
        self._vector = proprio_vector(self.kinematics, q, vel)
        self._q, self._stamp_ns = q, stamp_ns
        self.counters.updates += 1
        return self._vector
