"""The cloud inspector: collects the cloud inventory (Alibaba Cloud first) and evaluates the
cloud hops of a path (security groups, VPC routes, NAT gateway, CLB)."""
