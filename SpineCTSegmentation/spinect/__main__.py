import sys

from spinect.cli import main

sys.exit(main())
