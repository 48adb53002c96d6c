"""The cloud path evaluation engine: pure functions over a CloudInventory (security groups, VPC
routes and SNAT, CLB listeners). Shared because the cloud stage and the simulator both run it."""
