"""The simulated arm behind the software servo bus: :class:`SimBusBridge` couples a
:class:`~so101_deploy.sim.sim_arm.SimArm` to the bus's goals, torque and present positions, and
:class:`BusProcess` serves that bus (:class:`so101_deploy.arm.emulator.EmulatedBus` with
``external_motion``) from a child process, so the real servo node drives the sim through the real
scservo_sdk (the sim arm node's bus variant, ``SO101_SIM_BUS_LINK``).
"""

from __future__ import annotations

import math
import os
import time
from typing import TYPE_CHECKING, Mapping

import numpy as np

from so101_deploy.core.messages import JOINT_NAMES

if TYPE_CHECKING:
    from so101_deploy.sim.sim_arm import SimArm


class SimBusBridge:
    """The simulated arm behind the software servo bus (:class:`so101_deploy.arm.emulator.EmulatedBus`
    with ``external_motion=True``): the real servo node drives the sim through the real scservo_sdk.

    Before each control step the goal each servo is driving to (Goal_Position steps) becomes the
    sim's joint goal through the calibration, and a servo without torque makes its joint limp;
    after the step the simulated joints are reported back as Present_Position steps.  Until the first
    Torque_Enable write the arm holds its reset pose (as a real arm resting there would), so the
    servo node's slow start finds the arm where the episode put it; after that, torque off is limp.
    """

    def __init__(self, sim: SimArm, bus, calibration):
        self.sim = sim
        self.bus = bus
        self.calibration = calibration
        self.ids = [calibration.motor(name).id for name in JOINT_NAMES]
        self.torque_seen = False
        missing = [i for i in self.ids if i not in bus.torque_enabled()]
        if missing:
            raise ValueError(f"SimBusBridge: the bus has no servo with id {missing} (calibration {calibration.source})")
        self.report()

    def apply(self) -> None:
        """Bus goals and torque -> sim actuators (call before :meth:`SimArm.step`)."""
        goals = self.bus.goal_steps()
        torque = self.bus.torque_enabled()
        on = np.array([torque[i] for i in self.ids], dtype=bool)
        self.torque_seen = self.torque_seen or bool(on.any())
        if not self.torque_seen:
            return
        goal_rad = self.calibration.steps_to_rad(np.array([goals[i] for i in self.ids], dtype=np.float64))
        self.sim.set_torque(on)
        self.sim.apply_goal(np.where(on, goal_rad, self.sim.joint_state()[0]))

    def report(self) -> None:
        """Sim joints -> Present_Position steps (call after :meth:`SimArm.step`)."""
        steps = self.calibration.rad_to_steps(self.sim.joint_state()[0])
        self.bus.set_present_steps({i: float(s) for i, s in zip(self.ids, steps)})


RELEASE_QUIET_S = 1.0  # a bus this long without a packet after torque off: the client is done with it
RELEASE_CONFIRM_S = 3.0  # the most a stopping bus waits for that, after torque off (a client may poll on)


def _bus_process_main(link: str, calibration_path: str | None, start_steps: dict, present, goals, torque,
                      stop, ready, error, locked=None, last_packet_s=None) -> None:
    """The software servo bus in its own process (see :class:`BusProcess`), synced through shared arrays."""
    from so101_deploy.arm.calibration import Calibration
    from so101_deploy.arm.emulator import EmulatedBus

    parent = os.getppid()
    ids = sorted(start_steps)
    try:
        cal = Calibration.load(calibration_path) if calibration_path else Calibration.example()
        bus = EmulatedBus(link, calibration=cal, external_motion=True, initial_steps=start_steps).start()
    except Exception as e:  # noqa: BLE001 - reported to the parent, which raises it
        error.put(f"{type(e).__name__}: {e}")
        ready.set()
        return
    try:
        ready.set()
        packets = -1
        while not stop.is_set() and os.getppid() == parent:  # a killed simulator takes its bus along
            with present.get_lock():
                p = list(present)
            if not any(math.isnan(v) for v in p):
                bus.set_present_steps(dict(zip(ids, p)))
            g, t = bus.goal_steps(), bus.torque_enabled()
            with goals.get_lock():
                goals[:] = [g[i] for i in ids]
                torque[:] = [1 if t[i] else 0 for i in ids]
                if locked is not None:
                    locked[:] = [bus.register(i, "Lock") for i in ids]
                if last_packet_s is not None and bus.counters["packets"] != packets:
                    packets = bus.counters["packets"]
                    last_packet_s.value = time.monotonic()
            stop.wait(0.002)
    finally:
        bus.stop()


class BusProcess:
    """:class:`so101_deploy.arm.emulator.EmulatedBus` (``external_motion``) served by a child process,
    with the same simulator accessors (``goal_steps``, ``torque_enabled``, ``set_present_steps``).

    Why a process: dora's ``Node()`` holds the Python GIL until every node of the dataflow has
    started (measured: a thread got 1 of ~90 time slices during a 4.5 s ``Node()``), and the servo
    node must talk to the bus before it starts its own ``Node()``; a bus thread in the simulator's
    process could not answer, and the dataflow would fail at start.
    """

    def __init__(self, link: str, calibration_path: str | None, start_steps: dict[int, float]):
        import multiprocessing as mp

        self._ctx = mp.get_context("spawn")  # never fork a process holding MuJoCo/GL state
        self.link = str(link)
        self.calibration_path = calibration_path
        self.start_steps = {int(i): float(v) for i, v in start_steps.items()}
        self.ids = sorted(self.start_steps)
        n = len(self.ids)
        self._present = self._ctx.Array("d", [math.nan] * n)
        self._goals = self._ctx.Array("d", [self.start_steps[i] for i in self.ids])
        self._torque = self._ctx.Array("b", [0] * n)
        self._locked = self._ctx.Array("b", [0] * n)  # the Lock register: 1 while torque was on
        self._last_packet_s = self._ctx.Value("d", 0.0, lock=False)  # monotonic; written under _goals' lock
        self._stop = self._ctx.Event()
        self._ready = self._ctx.Event()
        self._error = self._ctx.Queue()
        self._proc = None

    @property
    def path(self) -> str:
        return self.link

    def start(self, timeout_s: float = 60.0) -> "BusProcess":
        self._proc = self._ctx.Process(
            target=_bus_process_main, name="so101-sim-bus", daemon=True,
            args=(self.link, self.calibration_path, self.start_steps, self._present, self._goals, self._torque,
                  self._stop, self._ready, self._error, self._locked, self._last_packet_s))
        self._proc.start()
        deadline = time.monotonic() + timeout_s
        while not self._ready.wait(0.1):
            if not self._proc.is_alive():
                code = self._proc.exitcode
                self.stop()
                raise RuntimeError(f"software servo bus at {self.link}: its process exited with code {code} "
                                   f"before serving (a script using it needs an `if __name__ == '__main__':` guard)")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"software servo bus at {self.link} did not start within {timeout_s:.0f} s")
        if not self._error.empty():
            msg = self._error.get()
            self.stop()
            raise RuntimeError(f"software servo bus at {self.link} failed to start: {msg}")
        return self

    def goal_steps(self) -> dict[int, int]:
        with self._goals.get_lock():
            return {i: int(round(v)) for i, v in zip(self.ids, self._goals)}

    def torque_enabled(self) -> dict[int, bool]:
        with self._goals.get_lock():
            return {i: bool(v) for i, v in zip(self.ids, self._torque)}

    def set_present_steps(self, steps: Mapping[int, float]) -> None:
        with self._present.get_lock():
            for k, i in enumerate(self.ids):
                if i in steps:
                    self._present[k] = float(steps[i])

    def _release_settled(self) -> bool:
        """The bus quiet since the last packet: briefly once every Lock is 0 (the servo node's release
        writes Lock 0 last), longer otherwise."""
        with self._goals.get_lock():
            quiet_s = time.monotonic() - self._last_packet_s.value
            unlocked = not any(self._locked)
        return quiet_s >= (RELEASE_QUIET_S / 10 if unlocked else RELEASE_QUIET_S)

    def stop(self, torque_grace_s: float = 0.0) -> None:
        """Stop the bus; with ``torque_grace_s``, first give the servo node that long to release torque
        (dora stops every node at once: a real arm stays powered while its servo node shuts down).

        Torque off alone is not the end of a release: the servo node broadcasts torque off first, then
        confirms servo by servo; so the bus also waits (at most RELEASE_CONFIRM_S) for it to go quiet."""
        deadline = time.monotonic() + torque_grace_s
        while self._proc is not None and time.monotonic() < deadline and any(self.torque_enabled().values()):
            time.sleep(0.02)
        if torque_grace_s > 0:
            settle_by = min(deadline, time.monotonic() + RELEASE_CONFIRM_S)
            while self._proc is not None and time.monotonic() < settle_by and not self._release_settled():
                time.sleep(0.02)
        self._stop.set()
        if self._proc is not None:
            self._proc.join(timeout=5.0)
            if self._proc.is_alive():  # our own child, by its handle
                self._proc.kill()
                self._proc.join(timeout=2.0)
            self._proc = None
