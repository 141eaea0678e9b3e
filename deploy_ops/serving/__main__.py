"""``python -m deploy_ops.serving``: one serving process (see :mod:`deploy_ops.serving.app`).

With arguments it is the command line the local deployer uses. Without any, it is the ECS
container: :mod:`deploy_ops.serving.container` reads the task definition's environment, fetches
and verifies the model, then serves it (the images' command is exactly this, no arguments).
"""

import sys

if len(sys.argv) > 1:
    from deploy_ops.serving.app import main

    sys.exit(main())
else:
    from deploy_ops.serving.container import main as container_main

    sys.exit(container_main())
