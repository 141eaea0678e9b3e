"""The gated rollout: policy and stage plan, replayed traffic, measurement and gates, leases,
the controller, recovery of interrupted rollouts."""
