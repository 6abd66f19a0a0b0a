"""``python -m so101_deploy.tools.faults``: the matrix, or (``--serve-bus``) the software bus of one scenario."""

import sys

from so101_deploy.tools.faults import main

sys.exit(main())
