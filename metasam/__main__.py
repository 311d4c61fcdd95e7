import sys

from metasam.cli import main

sys.exit(main())
