"""`python -m bench [--quick]`: the whole benchmark (see bench/harness.py); `make bench` runs it."""

import sys

from bench.harness import main

sys.exit(main())
