"""Torque guard: a small process that releases the arm's torque when the servo node dies.

The servo node releases torque on every exit path it lives through (stop, SIGTERM, an exception,
the end of its event loop).  A process killed outright (SIGKILL, the OOM killer, a segfault in a
native library) runs none of them and would leave six servos holding their last goal with nobody
watching.  So, before it first enables torque, the servo node starts this guard::

    python -m so101_deploy.arm.torque_guard --port PORT --baudrate B --ids 1,2,3,4,5,6 --parent-pid PID

* in its own session (``start_new_session``): a kill of the node's process group -- dora's own
  orphan guard does exactly that, see below -- does not take the guard along;
* with a pipe from the node on its stdin.  The node writes ``released`` (and closes the pipe) after
  its own shutdown released torque: the guard exits without touching the port.  End of file
  without ``released`` means the node is gone, whatever killed it (the kernel closes a dead
  process's descriptors): the guard opens the port with ``scservo_sdk``, writes Torque_Enable=0
  (broadcast 0xFE first -- one packet reaches every servo, no reply to lose -- then to each id
  with an acknowledgement, up to ``--tries`` rounds), logs one line to stderr and exits;
* the parent is also polled (``os.getppid()`` against ``--parent-pid``, every ``--poll-s``): if
  the pipe's write end leaked into another process (a fork) the EOF never comes, the reparenting
  still does;
* it answers ``ready`` on stdout once it is listening; the node enables torque only after that.

The guard imports the standard library, ``scservo_sdk`` (pyserial) and
:mod:`so101_deploy.arm.sts3215` -- nothing heavy (``python -X importtime``: ~80 ms of imports on a
busy 2-core box, no numpy, torch or mujoco; ~15 MB resident), all before it says ``ready``, so its
release path is a port open and a few packets (kill -9 of the node -> Torque_Enable=0 on all six in
~15-25 ms, tests/test_torque_guard.py).

What dora-rs 1.1 does to a Python node when its daemon dies (found by experiment on this machine:
a probe node, the servo node with the software bus, strace, a faulthandler stack dump, and the node
API's ``orphan_guard`` module):

* Nodes are process-group leaders in the daemon's session; the spawner sets
  ``PR_SET_PDEATHSIG=SIGKILL`` before exec and ``Node()`` clears it (strace).  (This project builds the
  servo node -- torque on -- before ``Node()``, so a daemon that dies in that window kills the node
  outright: the guard covers it.)
* ``kill -9`` of ``dora run`` (daemon in-process): an idle node gets one ``ERROR`` event ("fatal
  event stream error: daemon channel broken ... server disconnected unexpectedly") 0.1-0.2 s later,
  then its iterator ends without raising.  The servo node (inputs from another node, outputs sent)
  got no such event: with dora's two kills below switched off it stayed blocked in
  ``for event in node`` (faulthandler stack) with torque on.  Independently, every node spawned
  by ``dora run`` (env ``DORA_RUN_PARENT_PID``) runs a "dora-orphan-guard" thread that checks
  ``getppid()`` every 0.5 s and then ``killpg(own group, SIGKILL)``: the servo node is killed
  0-0.5 s after ``dora run`` -- its own release never ran, this guard released torque.  (Arming
  that thread is also what clears ``PR_SET_PDEATHSIG``; without it the kernel kills the node at once.)
* ``kill -9`` of the daemon under ``dora up`` + ``dora start``: an idle node again gets the
  ``ERROR`` event and ends; the servo node stayed blocked in its iterator for good (38 s, then
  killed by hand) with torque on, and no orphan guard is armed there (dora lets nodes outlive a
  daemon restart).  Hence :class:`ParentWatch`: the node watches its parent (the daemon, or
  ``dora run``) itself and, once it is gone, releases torque and exits.
"""

from __future__ import annotations

import argparse
import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterable

import scservo_sdk as scs

from so101_deploy.arm import sts3215 as sts
from so101_deploy.arm.sdk_port import PortHandler

RELEASED = b"released\n"
READY = b"ready\n"
TORQUE_ENABLE = sts.REGISTERS["Torque_Enable"].address  # 40
PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding so101_deploy/


class TorqueGuardError(RuntimeError):
    """The guard process could not be started (so torque must not be enabled)."""


# --- the guard process ---------------------------------------------------------------------------------------

def release_torque(port_name: str, baudrate: int, ids: Iterable[int], tries: int = 3,
                   reply_window_ms: float = 100.0) -> list[int]:
    """Open the port, write Torque_Enable=0 (broadcast, then each id with an acknowledgement, up
    to ``tries`` rounds), close it.  Returns the ids that never acknowledged; never raises."""
    pending = [int(i) for i in ids]
    port = PortHandler(port_name)
    port.reply_window_ms = reply_window_ms
    ph = scs.PacketHandler(0)
    for _ in range(tries):
        try:
            if port.setBaudRate(baudrate):  # opens the port
                break
        except Exception:  # noqa: BLE001 - pyserial: SerialException/OSError; try again
            pass
        time.sleep(0.05)
    else:
        return pending
    try:
        for _ in range(tries):
            for servo_id in [sts.BROADCAST_ID] + pending:
                try:
                    port.is_using = False
                    if servo_id == sts.BROADCAST_ID:
                        ph.write1ByteTxOnly(port, servo_id, TORQUE_ENABLE, 0)
                    else:
                        result, _err = ph.write1ByteTxRx(port, servo_id, TORQUE_ENABLE, 0)
                        if result == scs.COMM_SUCCESS:
                            pending.remove(servo_id)
                except Exception:  # noqa: BLE001 - a dead port: keep trying the rest, then the next round
                    pass
            if not pending:
                break
    finally:
        try:
            port.closePort()
        except Exception:  # noqa: BLE001
            pass
    return pending


def wait_for_parent(fd: int, parent_pid: int, poll_s: float = 0.1) -> bool:
    """Block until the parent says ``released`` (True) or is gone (False): EOF on ``fd`` without
    ``released``, or ``os.getppid()`` no longer ``parent_pid``."""
    buf = b""
    while True:
        if os.getppid() != parent_pid:
            return RELEASED in buf
        try:
            ready, _, _ = select.select([fd], [], [], poll_s)
        except InterruptedError:
            continue
        if ready:
            chunk = os.read(fd, 256)
            if not chunk:
                return RELEASED in buf
            buf += chunk
            if RELEASED in buf:
                return True


def _say(fd: int, text: str) -> None:
    """One unbuffered line; the reader may be gone (a dead dora's pipe), which must not matter."""
    try:
        os.write(fd, text.encode())
    except OSError:
        pass


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m so101_deploy.arm.torque_guard",
                                description="Release the servos' torque when the parent process dies.")
    p.add_argument("--port", required=True, help="the servo bus port the node uses")
    p.add_argument("--baudrate", type=int, default=sts.DEFAULT_BAUDRATE)
    p.add_argument("--ids", default="1,2,3,4,5,6", help="servo ids, comma-separated")
    p.add_argument("--parent-pid", type=int, default=None, help="the process to watch (default: the parent)")
    p.add_argument("--reply-window-ms", type=float, default=100.0)
    p.add_argument("--tries", type=int, default=3)
    p.add_argument("--poll-s", type=float, default=0.1, help="how often the parent pid is checked")
    args = p.parse_args(argv)
    ids = [int(i) for i in args.ids.split(",") if i.strip()]
    parent = args.parent_pid if args.parent_pid is not None else os.getppid()
    _say(1, READY.decode())
    try:  # nothing more goes to stdout: the parent stops reading it after "ready"
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.close(null)
    except OSError:
        pass
    if wait_for_parent(0, parent, args.poll_s):
        return 0
    why = f"servo process {parent} is gone (or closed its pipe) without saying 'released'"
    t0 = time.monotonic()
    unconfirmed = release_torque(args.port, args.baudrate, ids, args.tries, args.reply_window_ms)
    ms = (time.monotonic() - t0) * 1e3
    if unconfirmed:
        _say(2, f"[torque_guard] error: {why}; Torque_Enable=0 broadcast on {args.port}, not acknowledged by "
                f"ids {unconfirmed} ({ms:.0f} ms)\n")
        return 1
    _say(2, f"[torque_guard] warning: {why}; released torque on ids {ids} on {args.port} ({ms:.0f} ms)\n")
    return 0


# --- the client (in the servo node) --------------------------------------------------------------------------

class TorqueGuard:
    """Starts the guard process and tells it when the node itself has released torque.

    ``start()`` before torque is first enabled (raises :class:`TorqueGuardError` if the guard does
    not answer ``ready``); ``released()`` after the node's own release (idempotent); ``check()``
    from the loop reports once if the guard died on its own."""

    def __init__(self, port: str, baudrate: int, ids: Iterable[int], reply_window_ms: float = 100.0,
                 ready_timeout_s: float = 15.0, log: Callable[[str, str], None] | None = None):
        self.port, self.baudrate, self.ids = str(port), int(baudrate), [int(i) for i in ids]
        self.reply_window_ms = float(reply_window_ms)
        self.ready_timeout_s = ready_timeout_s
        self.log = log or (lambda level, message: None)
        self.proc: subprocess.Popen | None = None
        self._done = False
        self._reported = False

    def command(self) -> list[str]:
        return [sys.executable, "-m", "so101_deploy.arm.torque_guard", "--port", self.port,
                "--baudrate", str(self.baudrate), "--ids", ",".join(map(str, self.ids)),
                "--parent-pid", str(os.getpid()), "--reply-window-ms", str(self.reply_window_ms)]

    def start(self) -> "TorqueGuard":
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(PACKAGE_ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
        try:
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         env=env, start_new_session=True, cwd="/")
        except OSError as e:
            raise TorqueGuardError(f"torque guard: cannot start {sys.executable}: {e}") from None
        try:
            self._wait_ready()
        except BaseException:
            self._kill()
            raise
        self.proc.stdout.close()
        self.log("info", f"torque guard running (pid {self.proc.pid}): torque is released if this process dies")
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        fd, buf = self.proc.stdout.fileno(), b""
        while READY not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TorqueGuardError(f"torque guard: no 'ready' within {self.ready_timeout_s:.0f} s")
            ready, _, _ = select.select([fd], [], [], min(left, 0.5))
            if ready:
                chunk = os.read(fd, 64)
                if not chunk:
                    code = self.proc.wait(5)
                    raise TorqueGuardError(f"torque guard exited with code {code} before it was ready "
                                           f"(its stderr is in this node's log)")
                buf += chunk

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self._done = True

    def released(self, timeout_s: float = 5.0) -> None:
        """The node has released torque itself: the guard exits without touching the port."""
        if self.proc is None or self._done:
            return
        self._done = True
        try:
            self.proc.stdin.write(RELEASED)
            self.proc.stdin.close()
        except OSError:  # BrokenPipeError: the guard is already gone
            pass
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.log("warning", f"torque guard (pid {self.proc.pid}) did not exit after 'released'; killing it")
            self._kill()

    def check(self) -> bool:
        """True while the guard runs; logs once when it has died (a kill of this node would then
        leave torque on)."""
        if self.proc is None or self._done or self.proc.poll() is None:
            return True
        if not self._reported:
            self._reported = True
            self.log("error", f"torque guard exited (code {self.proc.returncode}): torque is no longer released "
                              f"if this process is killed")
        return False


class ParentWatch:
    """The orphan path, in the node: ``on_gone()`` is called (from a daemon thread) once the process
    that spawned this one -- the dora daemon, or ``dora run`` -- has exited (``os.getppid()`` moved,
    the kernel reparents an orphan).  Needed because the event loop cannot be trusted to notice: under
    ``dora up`` a killed daemon left the servo node blocked in its event iterator for good (see the
    module docstring).  Watches nothing when started with init as its parent (a hand-started node)."""

    def __init__(self, on_gone: Callable[[], None], poll_s: float = 0.1):
        self.parent = os.getppid()
        self._on_gone, self._poll_s = on_gone, poll_s
        self._stop = threading.Event()

    def start(self) -> "ParentWatch":
        if self.parent > 1:
            threading.Thread(target=self._run, name="so101-parent-watch", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self._poll_s):
            if os.getppid() != self.parent:
                self._on_gone()
                return


if __name__ == "__main__":
    sys.exit(main())
