"""so101-deploy: the pick-101 seg+depth DrQ-v2 policy on a real SO-101 arm, as a dora-rs dataflow.

Layers, imports running one way only (tests/test_layers.py checks it):
``core`` <- ``perception``, ``arm`` <- ``policy`` <- ``sim`` <- ``tools``.
"""

__version__ = "0.1.0"
