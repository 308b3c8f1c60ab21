"""A run on this machine: ``session`` (open, resume, re-attach, the one request builder, the drive loop),
``store`` (the run folder), ``flight`` (probes in flight on slots), ``live`` (what a person sees) and ``ladder``
(the ladder run itself)."""
