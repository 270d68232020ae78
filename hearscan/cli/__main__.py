import sys

from hearscan.cli import main

sys.exit(main())
