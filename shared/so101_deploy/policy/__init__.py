"""policy: the training observation (frame stack, proprioception), the DrQ-v2 encoder + actor and safe
checkpoint loading.  Imports :mod:`~so101_deploy.core`, :mod:`~so101_deploy.perception` and
:mod:`~so101_deploy.arm`."""
