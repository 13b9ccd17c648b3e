"""``python -m hybrid_actors.testing.simulator [--port 0] [--symbols 50] ...``"""

import sys

from ..cli import main

sys.exit(main())
