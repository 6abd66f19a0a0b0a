"""The ``scservo_sdk`` port handler with the servo bus's three fixes, in a module light enough for the
torque guard (``scservo_sdk`` and the standard library only):

- ``clearPort`` also drops stale input before each request (a late reply would be taken as the answer
  to the next one);
- the reply window is ``reply_window_ms`` (LeRobot's 50 ms; the stock SDK's 34 ms is missed on a loaded
  machine), after gitee.com/ftservo/SCServoSDK/issues/IBY2S6 as Feetech's newer SDK does;
- no busy poll: 0.1 ms of sleep between empty reads leaves the cores to the models (and to the software
  bus, which otherwise can miss the SDK's window).
"""

from __future__ import annotations

import time

import scservo_sdk as scs

REPLY_WINDOW_MS = 50.0  # how long the SDK waits for a reply (LeRobot's value; stock SDK: 34 ms)


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
            time.sleep(0.0001)
        return data
