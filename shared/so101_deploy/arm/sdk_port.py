"""The ``scservo_sdk`` port handler with the servo bus's three fixes, in a module light enough for the
torque guard (``scservo_sdk`` and the standard library only):

- ``clearPort`` also drops stale input before each request (a late reply would be taken as the answer
  to the next one);
- the reply window is ``reply_window_ms`` (LeRobot's 50 ms; the stock SDK's 34 ms is missed on a loaded
  machine), after gitee.com/ftservo/SCServoSDK/issues/IBY2S6 as Feetech's newer SDK does;
- no busy poll: after an empty read the SDK's loop waits in ``select`` until a byte arrives (at most
  1 ms, so its own reply-window check still runs), which leaves the cores to the models (and to the
  software bus, which otherwise can miss the SDK's window).  A fixed 0.1 ms sleep instead woke the servo
  node up to 10 000 times a second while a reply was on its way.
"""

from __future__ import annotations

import select
import time

import scservo_sdk as scs

REPLY_WINDOW_MS = 50.0  # how long the SDK waits for a reply (LeRobot's value; stock SDK: 34 ms)
WAIT_FOR_BYTES_S = 0.001  # an empty read waits this long at most for the next byte (select: woken at once)


class PortHandler(scs.PortHandler):
    reply_window_ms = REPLY_WINDOW_MS

    def clearPort(self):
        self.ser.flush()
        self.ser.reset_input_buffer()

    def setPacketTimeout(self, packet_length):
        # the stock formula is 2 x 16 ms "latency timer" + 2 ms; this is the bytes' time + the window
        self.packet_start_time = self.getCurrentTime()
        self.packet_timeout = self.tx_time_per_byte * (packet_length + 3.0) + self.reply_window_ms

    def readPort(self, length):
        data = self.ser.read(length)
        if not data:
            try:
                select.select([self.ser.fileno()], [], [], WAIT_FOR_BYTES_S)
            except (OSError, ValueError, AttributeError):  # a port without a file descriptor, or closed
                time.sleep(0.0001)
        return data
