import sys

from emilia_pipe.cli import main

sys.exit(main())
