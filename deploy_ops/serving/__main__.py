"""``python -m deploy_ops.serving``: one serving process (see :mod:`deploy_ops.serving.app`)."""
import sys

from deploy_ops.serving.app import main

sys.exit(main())
