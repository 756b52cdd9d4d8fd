import os
import sys

# Idle OpenMP threads sleep instead of spinning, which on a shared machine stalls the busy ones (the
# app sets the same); it must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .cli import main  # noqa: E402

sys.exit(main())
