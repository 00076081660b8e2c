import sys

from clipdyn.cli import main

sys.exit(main())
