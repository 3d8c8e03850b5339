"""``python -m tflite_fuser`` is the ``tflite-fuse`` command."""

import sys

from .cli import main

sys.exit(main())
