"""tools: the ``so101-deploy`` command line and every command (demo, bench, doctor, infer, fixtures, replay,
monitor).  The top layer: nothing in the package imports it."""
