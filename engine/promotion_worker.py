"""The child process that applies promotion rules to SQL (engine.promotion.RewriteWorker).

Parsing holds the GIL for as long as it runs and can take many times the text's size in
memory, so it runs here, away from the server's event loop, under a memory limit. One JSON
request per line on stdin ({"text", "rules", "steps"}: steps translate SQL of an older module
schema first), one JSON answer per line on stdout
({"statements"} or {"sqlstate", "error"}).
"""

from __future__ import annotations

import dataclasses
import json
import resource
import sys

from engine.contract import EngineError
from engine.promotion import WORKER_MEMORY, Rule, Rules, steps_from_json, translate_then_rewrite


def answer(line: str) -> dict[str, object]:
    request = json.loads(line)
    rules = Rules([Rule(**rule) for rule in request["rules"]])
    try:
        steps = steps_from_json(request.get("steps") or [])
        statements = translate_then_rewrite(request["text"], rules, steps)
    except EngineError as exc:
        return {"sqlstate": exc.sqlstate, "error": exc.message}
    except RecursionError:
        return {"sqlstate": "54001", "error": "the SQL to promote is nested too deeply"}
    except MemoryError:
        return {"sqlstate": "54000", "error": "the SQL to promote is too large to parse"}
    return {"statements": [dataclasses.asdict(s) for s in statements]}


def main() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY, WORKER_MEMORY))
    for line in sys.stdin:
        sys.stdout.write(json.dumps(answer(line)) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
