import sys

from linesight.cli.main import main

sys.exit(main())
