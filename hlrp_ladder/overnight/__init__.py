"""The long run: planned from the ladder's pick (``launch``), submitted detached to the spec's executor and
stopped gently (``control``), and followed (``status``). It runs under the same node-side probe runner as every
probe, so it writes a probe folder too:

    runs/<name>/<run-id>/overnight/      (overnight-2/, ... for later launches)
      request.json  submitted.json  runner.json  status.json (a heartbeat)  argv.json  log.txt  memory.csv
      metrics.jsonl  result.json
"""
from hlrp_ladder.overnight.control import folders, live_runs, refuse_if_live, start, stop
from hlrp_ladder.overnight.launch import Launch, LaunchError, launch_lines, plan_launch
from hlrp_ladder.overnight.status import status_lines, status_of

__all__ = ["Launch", "LaunchError", "folders", "launch_lines", "live_runs", "plan_launch", "refuse_if_live",
           "start", "status_lines", "status_of", "stop"]
