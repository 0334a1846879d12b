<?php
// php-memcached with OPT_BINARY_PROTOCOL through mcproxy: every verb the binary protocol serves,
// as PHP applications call them. Usage: php php_memcached_binary.php PORT; prints "ok".
$m = new Memcached();
$m->setOption(Memcached::OPT_BINARY_PROTOCOL, true);
$m->setOption(Memcached::OPT_COMPRESSION, false);
$m->addServer('127.0.0.1', (int)$argv[1]);
$ok = true;
function check($what, $got, $want) { global $ok; if ($got !== $want) { echo "FAIL $what: ", var_export($got, true), " want ", var_export($want, true), "\n"; $ok = false; } }
check("set", $m->set("a", "1"), true);
check("get", $m->get("a"), "1");
check("add existing", $m->add("a", "2"), false);
check("add result", $m->getResultCode(), Memcached::RES_NOTSTORED);
check("add new", $m->add("b", "x"), true);
check("replace", $m->replace("b", "y"), true);
check("append", $m->append("b", "z"), true);
check("prepend", $m->prepend("b", "w"), true);
check("get b", $m->get("b"), "wyz");
check("delete", $m->delete("b"), true);
check("get deleted", $m->get("b"), false);
check("miss code", $m->getResultCode(), Memcached::RES_NOTFOUND);
check("incr missing", $m->increment("n", 1), false);
check("incr initial", $m->increment("n2", 5, 100), 100);
check("incr again", $m->increment("n2", 5, 100), 105);
check("decr", $m->decrement("n2", 10), 95);
$cas = null;
$v = $m->get("a", null, Memcached::GET_EXTENDED);
check("cas get", $v["value"], "1");
check("cas ok", $m->cas($v["cas"], "a", "2"), true);
check("cas stale", $m->cas($v["cas"], "a", "3"), false);
check("touch", $m->touch("a", 100), true);
$m->setMulti(["m1" => "1", "m2" => "2", "m3" => "3"]);
check("getMulti", $m->getMulti(["m1", "m2", "m3", "nope"]), ["m1" => "1", "m2" => "2", "m3" => "3"]);
check("flags", $m->set("arr", [1, 2]), true);
check("flags get", $m->get("arr"), [1, 2]);
$ver = $m->getVersion();
check("version", is_array($ver), true);
echo $ok ? "ok\n" : "failed\n";
