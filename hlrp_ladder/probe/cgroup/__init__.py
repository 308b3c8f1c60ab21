"""Memory cgroups: one per probe, for an exact peak, a real kernel cap and a complete member list.

``handle`` (one cgroup, v1 or v2), ``discovery`` (where probe cgroups can go; the cgroup this process is in),
``delegation`` (cgroup v2 for an ordinary user), ``lifecycle`` (a capped cgroup per probe; sweeping stale ones).
"""
from hlrp_ladder.probe.cgroup.lifecycle import create, safe_name, sweep_stale
from hlrp_ladder.probe.cgroup.delegation import delegate, undelegate
from hlrp_ladder.probe.cgroup.discovery import Parent, enclosing, find_parent, job_of, mounts, own, own_dirs
from hlrp_ladder.probe.cgroup.handle import HOME, PARENT, MemoryCgroup, find, vmstat_oom_kills, working_set

__all__ = ["HOME", "PARENT", "MemoryCgroup", "Parent", "create", "delegate", "enclosing", "find", "find_parent", "job_of",
           "mounts", "own", "own_dirs", "safe_name", "sweep_stale", "undelegate", "vmstat_oom_kills", "working_set"]
