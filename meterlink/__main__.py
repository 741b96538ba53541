import sys

from meterlink.cli import main

sys.exit(main())
