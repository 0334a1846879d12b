<?php
// One PHP process of bench/php_socket.sh: N gets or sets of 100-byte values through one
// extension's client on one server address (host:port, or unix:/path), one request at a time,
// as a web request does. Prints "seconds cpu_seconds" of the loop alone (no start-up).
[, $ext, $target, $op, $n] = $argv;
$n = (int) $n;
$unix = str_starts_with($target, 'unix:') ? substr($target, 5) : null;
[$host, $port] = $unix === null ? explode(':', $target) : [null, 0];
if ($ext === 'memcache') {
    $m = new Memcache();
    $ok = $unix !== null ? $m->addServer("unix://$unix", 0) : $m->addServer($host, (int) $port);
} else {
    $m = new Memcached();
    $ok = $unix !== null ? $m->addServer($unix, 0) : $m->addServer($host, (int) $port);
}
if (!$ok) {
    fwrite(STDERR, "$ext: cannot add server $target\n");
    exit(1);
}
$value = str_repeat('x', 100);
$set = $ext === 'memcache'
    ? fn ($k) => $m->set($k, $value, 0, 0)
    : fn ($k) => $m->set($k, $value, 0);
$cpu = function () {
    $u = getrusage();
    return $u['ru_utime.tv_sec'] + $u['ru_utime.tv_usec'] / 1e6
        + $u['ru_stime.tv_sec'] + $u['ru_stime.tv_usec'] / 1e6;
};
$pid = getmypid();
$failed = 0;
$cpu0 = $cpu();
$t0 = hrtime(true);
for ($i = 0; $i < $n; $i++) {
    $key = 'php:' . (($pid * 7919 + $i) % 1000);
    if ($op === 'set') {
        $failed += $set($key) ? 0 : 1;
    } else {
        $failed += $m->get($key) === $value ? 0 : 1;
    }
}
$seconds = (hrtime(true) - $t0) / 1e9;
$used = $cpu() - $cpu0;
if ($failed > 0) {
    fwrite(STDERR, "$ext $op on $target: $failed of $n failed\n");
    exit(1);
}
printf("%.6f %.6f\n", $seconds, $used);
