"""The node collector: node agents read each node's network state, the collector stage
gathers the dumps of the nodes on a diagnosis path (docs/node-dump.md)."""
