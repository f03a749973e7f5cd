"""``python -m crdtstore.inspect``: the ``crdt-inspect`` command."""

import sys

from crdtstore.inspect.cli import main

sys.exit(main())
