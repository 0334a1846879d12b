<?php
// php-memcached with SASL (binary protocol) through mcproxy --client-auth. Usage:
// php php_memcached_sasl.php PORT USER PASSWORD; prints "ok" when a set and get work, else the
// result message of the first failure.
ini_set('memcached.use_sasl', '1');
$m = new Memcached();
$m->setOption(Memcached::OPT_BINARY_PROTOCOL, true);
$m->setSaslAuthData($argv[2], $argv[3]);
$m->addServer('127.0.0.1', (int)$argv[1]);
if (!$m->set('sasl-key', 'v')) {
    echo $m->getResultMessage(), "\n";
    exit(0);
}
echo $m->get('sasl-key') === 'v' ? "ok\n" : "get: " . $m->getResultMessage() . "\n";
