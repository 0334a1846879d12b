"""pymemcache against mcproxy: the basic verbs. Usage: python3 pymemcache_basic.py PORT."""
import sys

from pymemcache.client.base import Client

c = Client(("127.0.0.1", int(sys.argv[1])), connect_timeout=5, timeout=5)


def check(what, got, want):
    if got != want:
        sys.exit(f"{what}: got {got!r}, want {want!r}")


check("set", c.set("py:a", b"alpha", noreply=False), True)
check("set noreply", c.set("py:b", b"beta"), True)
check("get", c.get("py:a"), b"alpha")
check("get miss", c.get("py:none"), None)
check("get_many", c.get_many(["py:a", "py:none", "py:b"]), {"py:a": b"alpha", "py:b": b"beta"})
check("set counter", c.set("py:n", b"10", noreply=False), True)
check("incr", c.incr("py:n", 5), 15)
check("decr", c.decr("py:n", 3), 12)
value, cas = c.gets("py:a")
check("gets", value, b"alpha")
check("cas", c.cas("py:a", b"gamma", cas, noreply=False), True)
check("cas stale", c.cas("py:a", b"delta", cas, noreply=False), False)
check("after cas", c.get("py:a"), b"gamma")
check("add existing", c.add("py:a", b"x", noreply=False), False)
check("touch", c.touch("py:a", 100, noreply=False), True)
check("delete", c.delete("py:a", noreply=False), True)
check("deleted", c.get("py:a"), None)
check("version", c.version().startswith(b"1.6.0 mcproxy-"), True)
stats = c.stats()
check("stats domain", stats[b"domain"], b"app")
print("ok")
