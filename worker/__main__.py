import sys

from worker.commands.cli import main

sys.exit(main())
