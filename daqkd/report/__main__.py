"""``python -m daqkd.report``."""
import sys

from daqkd.report.command import main

sys.exit(main())
