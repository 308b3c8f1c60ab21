"""The ladder report: ``view`` (a run as the report sees it), ``tables``, ``plots``, ``analysis`` (the memory
model, the throughput knee), ``prose`` (the markdown) and ``write`` (md/json/csv). A compare run's report is
``compare.report``."""
from hlrp_ladder.report.tables import rich_table
from hlrp_ladder.report.view import RunView, load_run
from hlrp_ladder.report.output import write

__all__ = ["RunView", "load_run", "rich_table", "write"]
