"""arm: everything that moves the SO-101 or stands in for it on the bus: the STS3215 control table, the
scservo_sdk bus, calibration, kinematics, the controller, the safety filter, the e-stop and the software
servo bus.  Imports only :mod:`so101_deploy.core`."""
