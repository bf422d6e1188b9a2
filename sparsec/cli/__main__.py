import sys

from sparsec.cli.main import main

sys.exit(main())
