"""One probe, start to end, on the node where it runs: its folder on disk (``folder``), the node-side runner
(``node``, ``python -m hlrp_ladder.probe FOLDER``), the monitor (``runner``, ``sampler``, ``metrics``), how it
ended (``outcome``, ``kernel_log``), its process tree (``process``), its memory cgroup (``cgroup/``) and the
machine's facts (``host``)."""
