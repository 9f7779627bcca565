import sys

from grace_bench.cli import main

sys.exit(main())
