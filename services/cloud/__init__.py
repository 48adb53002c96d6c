"""The cloud inspector: collects the cloud inventory (Alibaba Cloud first). The engine that
evaluates the cloud hops of a path (security groups, VPC routes, NAT gateway, CLB) is
services/simulator/cloudeval/, which the simulator runs."""
