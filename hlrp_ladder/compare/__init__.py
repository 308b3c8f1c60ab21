"""compare: a matrix of variants run at one batch size, each ``repeats`` times, to see what a setting costs.
``matrix`` (pure: what each variant runs, the pairs, the deltas with their noise bands), ``runner`` (runs it
through the spec's executor) and ``report`` (md/json/csv and a plot)."""
