import sys

from daqkd.bench.command import main

sys.exit(main())
