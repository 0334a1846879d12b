"""pymemcache under load through mcproxy while the test kills a server.

Usage: python3 pymemcache_load.py PORT OPS. Writes then reads back KEYS keys in rounds, for
OPS operations; prints "started" after the first round, then one JSON line: operations,
errors, stale reads (a value older than the last acknowledged write of that key), and the
errors in the last quarter of the run.
"""
import json
import sys

from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheError

KEYS = 50
c = Client(("127.0.0.1", int(sys.argv[1])), connect_timeout=5, timeout=5)
ops = int(sys.argv[2])
written = {}
errors = stale = late_errors = 0
for n in range(ops):
    key = f"load:{n % KEYS}"
    late = n >= ops * 3 // 4
    try:
        if (n // KEYS) % 2 == 0:
            if c.set(key, str(n).encode(), noreply=False):
                written[key] = n
        else:
            got = c.get(key)
            if got is not None and key in written and int(got) < written[key]:
                stale += 1
    except (MemcacheError, OSError):
        errors += 1
        late_errors += late
    if n == KEYS:
        print("started", flush=True)
print(json.dumps({"ops": ops, "errors": errors, "stale": stale, "late_errors": late_errors}), flush=True)
