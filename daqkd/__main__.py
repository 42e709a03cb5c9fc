"""``python -m daqkd <command> ...``: the console command (daqkd.cli)."""
import sys

from daqkd.cli import main

sys.exit(main())
