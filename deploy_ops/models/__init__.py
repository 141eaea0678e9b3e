"""Models: the bundle format (network, scaler, features), the content-addressed artifact store,
and the model registry (versions, stages, audit)."""
