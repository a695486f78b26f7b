"""`python -m sunsetd`: the daemon, as the `sunsetd` command runs it."""
import sys

from sunsetd.cli import daemon_main

sys.exit(daemon_main())
