"""pylibmc (libmemcached underneath) with binary=True through mcproxy: the verbs Python
applications call. Usage: python3 pylibmc_binary.py PORT; prints "ok"."""
import sys

import pylibmc

mc = pylibmc.Client(["127.0.0.1:%s" % sys.argv[1]], binary=True, behaviors={"cas": True})
assert mc.set("py:a", "1")
assert mc.get("py:a") == "1"
assert not mc.add("py:a", "2")
assert mc.add("py:b", "x")
assert mc.replace("py:b", "y")
assert mc.append("py:b", "z") and mc.prepend("py:b", "w")
assert mc.get("py:b") == "wyz"
assert mc.delete("py:b")
assert mc.get("py:b") is None
mc.set("py:n", 10)
assert mc.incr("py:n", 5) == 15
assert mc.decr("py:n", 3) == 12
mc.set_multi({"py:m1": "1", "py:m2": "2"})
assert mc.get_multi(["py:m1", "py:m2", "py:none"]) == {"py:m1": "1", "py:m2": "2"}
mc.delete_multi(["py:m1", "py:m2"])
assert mc.get_multi(["py:m1", "py:m2"]) == {}
assert mc.touch("py:a", 100)
value, cas = mc.gets("py:a")
assert value == "1" and mc.cas("py:a", "3", cas) and not mc.cas("py:a", "4", cas)
assert mc.get("py:a") == "3"
print("ok")
