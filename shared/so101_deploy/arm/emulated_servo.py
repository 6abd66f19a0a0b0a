"""One emulated STS3215 (the servo model behind :mod:`so101_deploy.arm.emulator`'s software bus).

Its state is the control table's bytes (:mod:`.sts3215`) plus the motion behind the read-only
registers, as the firmware behaves:

* Torque_Enable=1 holds the present position (never jumps to a stale Goal_Position register);
  Goal_Position moves the servo only while torque is on, toward the goal at a bounded speed
  (``max_speed_sps``, Goal_Velocity if lower; Acceleration ramps the speed, 100 step/s^2 per unit),
  clamped to Min/Max_Position_Limit.  Torque_Enable 0 (or 2, damping) leaves the servo limp.
* Present_Position = (encoder - Homing_Offset) mod 4096; Goal_Position is in the same frame.
* Lock gates persistence: an EEPROM write (address < 40) always changes the live value; it is
  also persisted (``persisted_eeprom``) only while Lock == 0.  Read-only registers ignore writes.
  Writing ID re-addresses the servo (the bus still answers that write from the old ID).
  Torque_Enable=128 re-centres (Homing_Offset so present reads 2048).
* Operating_Mode: only 0 (position) is modelled; a write of 1-3 (velocity, PWM, step) or more is
  acknowledged but rejected (the register keeps its value; :attr:`EmulatedServo.rejected` says why).
* :meth:`EmulatedServo.factory_reset` (instruction RESET): every EEPROM register back to its factory
  value except ID, persisted; torque off.  Whether a real STS3215 keeps its ID is disputed (servolab:
  kept; feetech-cli's simulator: 1): kept here, so the servo stays addressable.
* Injected status bits (``fault_bits``: voltage 0x01, angle 0x02, overheat 0x04, overcurrent 0x08)
  appear in Status and every reply's ERR byte; overheat also reads Present_Temperature 5 degC over
  Max_Temperature_Limit, voltage reads Present_Voltage 0.5 V under Min_Voltage_Limit.  The torque cut
  the firmware applies for them (Unloading_Condition) is not modelled.
"""

from __future__ import annotations

import math

from so101_deploy.arm import sts3215 as sts

OVERLOAD_LOAD = 1000  # Present_Load (0.1 % PWM) reported by an overloaded servo

_TORQUE = sts.REGISTERS["Torque_Enable"]
_LOCK = sts.REGISTERS["Lock"]
_ID = sts.REGISTERS["ID"]
_MODE = sts.REGISTERS["Operating_Mode"]


class EmulatedServo:
    """One STS3215: its register bytes plus the motion state behind the read-only registers."""

    def __init__(self, servo_id: int, encoder_steps: float = 2048.0):
        self.mem = bytearray(sts.TABLE_END)
        for reg in sts.REGISTERS.values():
            self._set_raw(reg, reg.default)
        self._set_raw(_ID, servo_id)
        self.persisted_eeprom = bytes(self.mem[: sts.EEPROM_END])
        self.encoder = float(encoder_steps) % sts.STEPS_PER_TURN
        self.target = self.present()  # internal position target (present frame)
        self.velocity_sps = 0.0
        self.pending: tuple[int, bytes] | None = None  # REG_WRITE waiting for ACTION
        self.overload = False
        self.fault_bits = 0  # injected Status bits besides overload (see module doc)
        self.rejected: list[tuple[int, str, int, str]] = []  # the last write's rejected (addr, name, value, why)

    # raw register access
    def _set_raw(self, reg: sts.Register, raw: int) -> None:
        self.mem[reg.address: reg.address + reg.size] = bytes(sts.to_bytes(raw, reg.size))

    def get(self, name: str) -> int:
        reg = sts.REGISTERS[name]
        return sts.decode_value(reg, sts.from_bytes(self.mem[reg.address: reg.address + reg.size]))

    def set(self, name: str, value: int) -> None:
        reg = sts.REGISTERS[name]
        self._set_raw(reg, sts.encode_value(reg, value))

    @property
    def id(self) -> int:
        return self.mem[_ID.address]

    @property
    def torque_on(self) -> bool:
        return self.mem[_TORQUE.address] == 1

    def present(self) -> float:
        return (self.encoder - self.get("Homing_Offset")) % sts.STEPS_PER_TURN

    def set_present(self, steps: float) -> None:
        self.encoder = (float(steps) + self.get("Homing_Offset")) % sts.STEPS_PER_TURN

    def _limit(self, steps: float) -> float:
        lo, hi = self.get("Min_Position_Limit"), self.get("Max_Position_Limit")
        if lo == 0 and hi == 0:  # no limit configured
            lo, hi = 0, sts.MAX_STEP
        return min(max(steps, lo), hi, sts.MAX_STEP) if lo <= hi else steps

    # motion (built-in model): a bounded-speed approach to the target, optional acceleration ramp
    def advance(self, dt_s: float, max_speed_sps: float) -> None:
        if dt_s <= 0:
            return
        p = self.present()
        if not self.torque_on:
            self.velocity_sps = 0.0
            self.target = p
            return
        speed = max_speed_sps
        gv = abs(self.get("Goal_Velocity"))
        if gv > 0:
            speed = min(speed, gv)
        err = self.target - p
        accel = self.mem[sts.REGISTERS["Acceleration"].address] * 100.0  # step/s^2, 0 = unlimited
        want = math.copysign(speed, err) if abs(err) > 1e-9 else 0.0
        if accel > 0:
            want = math.copysign(min(speed, math.sqrt(2 * accel * abs(err))), err) if err else 0.0
            dv = max(-accel * dt_s, min(accel * dt_s, want - self.velocity_sps))
            v = self.velocity_sps + dv
        else:
            v = want
        step = v * dt_s
        if err == 0 or (step * err > 0 and abs(step) >= abs(err)):
            p_new, v = self.target, 0.0  # arrived (never overshoot)
        else:
            p_new = p + step
        self.velocity_sps = v
        self.set_present(p_new)

    def refresh_read_only(self) -> None:
        p = self.present()
        self.set("Present_Position", int(round(p)) % sts.STEPS_PER_TURN)
        self.set("Present_Velocity", max(-32767, min(32767, int(round(self.velocity_sps)))))
        load = OVERLOAD_LOAD if self.overload else min(1000, int(abs(self.target - p)) if self.torque_on else 0)
        self.set("Present_Load", load)
        self.set("Present_Goal", int(round(self.target)))
        moving = self.torque_on and abs(self.target - p) >= 1.0
        self.mem[sts.REGISTERS["Moving"].address] = 1 if moving else 0
        status_reg = sts.REGISTERS["Status"].address
        self.mem[status_reg] = ((sts.ERR_OVERLOAD if self.overload else 0) | self.fault_bits) & sts.ERR_MAX
        temperature = sts.REGISTERS["Present_Temperature"].default
        if self.fault_bits & sts.ERR_OVERHEAT:
            temperature = min(255, self.get("Max_Temperature_Limit") + 5)
        self.set("Present_Temperature", temperature)
        voltage = sts.REGISTERS["Present_Voltage"].default
        if self.fault_bits & sts.ERR_VOLTAGE:
            voltage = max(0, self.get("Min_Voltage_Limit") - 5)
        self.set("Present_Voltage", voltage)

    @property
    def baudrate(self) -> int | None:
        """The port speed (bit/s) this servo listens at: its Baud_Rate index in LeRobot's table."""
        return sts.BAUDRATE_OF_INDEX.get(self.mem[sts.REGISTERS["Baud_Rate"].address])

    def factory_reset(self) -> list[tuple[int, str | None, int]]:
        """RESET: EEPROM registers to their factory values (ID kept), persisted; torque off.  Returns
        the registers that changed, like :meth:`write`."""
        before = bytes(self.mem)
        for reg in sts.REGISTERS.values():
            if reg.address < sts.EEPROM_END and reg.name != "ID":
                self._set_raw(reg, reg.default)
        self.mem[_TORQUE.address] = 0
        self.persisted_eeprom = bytes(self.mem[: sts.EEPROM_END])
        self.target = self.present()
        self.velocity_sps = 0.0
        changed = []
        for reg in sts.REGISTERS.values():
            a = reg.address
            if sts.REGISTER_AT.get(a) is not reg or reg.read_only:
                continue
            if before[a: a + reg.size] != self.mem[a: a + reg.size]:
                changed.append((a, reg.name, self.get(reg.name)))
        return changed

    # writes: returns the (address, register, decoded value) writes that took effect, for the log
    def write(self, address: int, data: bytes) -> list[tuple[int, str | None, int]]:
        accepted: list[tuple[int, str | None, int]] = []
        self.rejected = []
        end = min(address + len(data), sts.TABLE_END)
        old_offset = self.get("Homing_Offset")
        old_torque = self.mem[_TORQUE.address]
        changed = bytearray(self.mem)
        written = set()
        for a in range(address, end):
            reg = sts.REGISTER_AT.get(a) or _register_containing(a)
            if reg is not None and reg.read_only:
                continue
            if a == _MODE.address and data[a - address] != 0:
                mode = data[a - address]
                self.rejected.append((a, _MODE.name, mode, f"Operating_Mode {mode} "
                                      f"({sts.OPERATING_MODES.get(mode, 'not a mode')}) is not modelled: "
                                      f"position mode (0) only"))
                continue
            changed[a] = data[a - address]
            written.add(a)
        if not written:
            return accepted
        self.mem[:] = changed
        # decode per register touched
        seen = set()
        for a in sorted(written):
            reg = sts.REGISTER_AT.get(a) or _register_containing(a)
            key = reg.address if reg is not None else a
            if key in seen:
                continue
            seen.add(key)
            if reg is None:
                accepted.append((a, None, self.mem[a]))
            else:
                accepted.append((reg.address, reg.name, self.get(reg.name)))
        if any(a < sts.EEPROM_END for a in written) and self.mem[_LOCK.address] == 0:
            self.persisted_eeprom = bytes(self.mem[: sts.EEPROM_END])
        # side effects
        if self.get("Homing_Offset") != old_offset:
            # the encoder does not move: present changes; hold where the servo is
            self.target = self.present()
        names = {n for _, n, _ in accepted}
        torque = self.mem[_TORQUE.address]
        if "Torque_Enable" in names:
            if torque == 128:  # re-centre: present reads 2048 here
                off = int(round(self.encoder - 2048))
                off = (off + 2048) % sts.STEPS_PER_TURN - 2048
                self.set("Homing_Offset", max(-2047, min(2047, off)))
                self.mem[_TORQUE.address] = 0
                torque = 0
            if torque == 1 and old_torque != 1:
                self.target = self.present()  # hold: never jump to a stale Goal_Position
                self.velocity_sps = 0.0
        if "Goal_Position" in names and torque == 1:
            self.target = self._limit(float(self.get("Goal_Position")))
        return accepted


def _register_containing(address: int) -> sts.Register | None:
    for reg in sts.REGISTERS.values():
        if reg.address <= address < reg.address + reg.size:
            return reg
    return None
