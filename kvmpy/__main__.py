"""``python -m kvmpy``: the same as the ``kvmpy`` command."""

import gc
import sys

gc.disable()  # from the first import: kvmpy.cli.main turns the collector back on to run the VM

from kvmpy.cli import main  # noqa: E402

sys.exit(main())
