"""Where Kubernetes objects come from: a snapshot directory or a live API server."""
