import sys

from vmcrypt.cli import main

sys.exit(main())
