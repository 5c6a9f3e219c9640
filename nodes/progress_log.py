"""The step points of the last few training runs in this server, for a page reloaded during a run.

Live ``lora_lab.progress`` events reach only the pages that are open; a page loaded (or reloaded) mid-run asks

    GET /lora_lab/progress?prompt_id=<id>&node_id=<id>     (both optional filters)
    -> {"runs": [{"prompt_id", "node_id", "total", "points": [[step, loss, lr, val_loss, elapsed], ...]}]}

and merges the points it missed. Runs are kept in memory only (the last ``MAX_RUNS``), newest last.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

MAX_RUNS = 8


class RunLog:
    """Every point of the last MAX_RUNS runs, keyed by (prompt_id, node_id)."""

    def __init__(self, max_runs: int = MAX_RUNS):
        self.max_runs = max_runs
        self._runs: OrderedDict[tuple, dict] = OrderedDict()
        self._lock = threading.Lock()

    def start(self, prompt_id: str | None, node_id: str, total: int):
        """Begin (or restart) a run; returns the ``on_point`` callback that records its steps."""
        key = (prompt_id, str(node_id))
        run = {"prompt_id": prompt_id, "node_id": str(node_id), "total": int(total), "points": []}
        with self._lock:
            self._runs.pop(key, None)
            self._runs[key] = run
            while len(self._runs) > self.max_runs:
                self._runs.popitem(last=False)
        points = run["points"]
        return points.append  # list.append is atomic under the GIL; readers copy under the lock

    def runs(self, prompt_id: str | None = None, node_id: str | None = None) -> list[dict]:
        with self._lock:
            return [dict(run, points=list(run["points"])) for run in self._runs.values()
                    if (prompt_id is None or run["prompt_id"] == prompt_id)
                    and (node_id is None or run["node_id"] == str(node_id))]


RUN_LOG = RunLog()


ROUTE = "/lora_lab/progress"


def register_routes(routes, log: RunLog = RUN_LOG) -> None:
    """Add GET /lora_lab/progress to ComfyUI's aiohttp route table (before the server starts), unless the table
    has it already: adding a route twice stops the server at start-up, whoever added the first."""
    from aiohttp import web

    if any(getattr(route, "path", None) == ROUTE for route in routes):
        return

    @routes.get(ROUTE)
    async def lora_lab_progress(request):
        query = request.rel_url.query
        return web.json_response({"runs": log.runs(query.get("prompt_id"), query.get("node_id"))})
