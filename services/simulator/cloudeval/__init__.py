"""The cloud path evaluation engine: pure functions over a CloudInventory (security groups, VPC
routes and SNAT, CLB listeners). The simulator runs it; the cloud stage only collects."""
