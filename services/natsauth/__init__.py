"""`netdiag nats-auth`: the NATS auth callout that admits node agents by their Kubernetes token."""
