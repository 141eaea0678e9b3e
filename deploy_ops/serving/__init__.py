"""Serving: the HTTP app of one slot (``python -m deploy_ops.serving``) and its clients."""
