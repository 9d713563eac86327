import sys

from vtpm.cli import main

sys.exit(main())
