"""The dataplane engines: policy routing and netfilter, as pure libraries over the node dumps."""
