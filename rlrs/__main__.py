import sys

from rlrs.cli import main

sys.exit(main())
