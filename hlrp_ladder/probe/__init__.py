"""One probe, start to end: spawn, memory cgroup, tree sampler, kill, and how it ended."""
