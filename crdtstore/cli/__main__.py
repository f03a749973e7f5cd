import sys

from crdtstore.cli import main

sys.exit(main())
