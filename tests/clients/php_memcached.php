<?php
// php-memcached (libmemcached underneath) against mcproxy: the basic verbs.
// Usage: php php_memcached.php PORT. Prints "ok" or fails with a message and exit 1.
function check($what, $got, $want) {
    if ($got !== $want) {
        fwrite(STDERR, "$what: got " . var_export($got, true) . ", want " . var_export($want, true) . "\n");
        exit(1);
    }
}
$m = new Memcached();
$m->setOption(Memcached::OPT_COMPRESSION, false); // append needs uncompressed values
$m->addServer("127.0.0.1", (int)$argv[1]);
check('set', $m->set('pmd:a', 'alpha'), true);
check('set', $m->set('pmd:b', 'beta'), true);
check('get', $m->get('pmd:a'), 'alpha');
check('get miss', $m->get('pmd:none'), false);
check('miss code', $m->getResultCode(), Memcached::RES_NOTFOUND);
check('getMulti', $m->getMulti(['pmd:a', 'pmd:none', 'pmd:b']), ['pmd:a' => 'alpha', 'pmd:b' => 'beta']);
check('set counter', $m->set('pmd:n', 10), true);
check('increment', $m->increment('pmd:n', 5), 15);
check('decrement', $m->decrement('pmd:n', 3), 12);
$got = $m->get('pmd:a', null, Memcached::GET_EXTENDED);
check('gets', $got['value'], 'alpha');
check('cas', $m->cas($got['cas'], 'pmd:a', 'gamma'), true);
check('cas stale', $m->cas($got['cas'], 'pmd:a', 'delta'), false);
check('cas code', $m->getResultCode(), Memcached::RES_DATA_EXISTS);
check('after cas', $m->get('pmd:a'), 'gamma');
check('add existing', $m->add('pmd:a', 'x'), false);
check('append', $m->append('pmd:b', '!'), true);
check('appended', $m->get('pmd:b'), 'beta!');
check('touch', $m->touch('pmd:b', 100), true);
check('delete', $m->delete('pmd:b'), true);
check('deleted', $m->get('pmd:b'), false);
check('setMulti', $m->setMulti(['pmd:x' => 1, 'pmd:y' => [2]]), true);
check('getMulti values', $m->getMulti(['pmd:y', 'pmd:x']), ['pmd:y' => [2], 'pmd:x' => 1]);
echo "ok\n";
