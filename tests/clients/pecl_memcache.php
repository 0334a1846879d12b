<?php
// PECL memcache (the seed threads' own extension) against mcproxy: the basic verbs.
// Usage: php pecl_memcache.php PORT. Prints "ok" or fails with a message and exit 1.
function check($what, $got, $want) {
    if ($got !== $want) {
        fwrite(STDERR, "$what: got " . var_export($got, true) . ", want " . var_export($want, true) . "\n");
        exit(1);
    }
}
$m = new Memcache();
$m->addServer('127.0.0.1', (int)$argv[1]);
check('set', $m->set('php:a', 'alpha', 0, 0), true);
check('set', $m->set('php:b', 'beta', 0, 0), true);
check('get', $m->get('php:a'), 'alpha');
check('get miss', $m->get('php:none'), false);
check('multi-get', $m->get(['php:a', 'php:none', 'php:b']), ['php:a' => 'alpha', 'php:b' => 'beta']);
check('set counter', $m->set('php:n', '10', 0, 0), true);
check('increment', $m->increment('php:n', 5), 15);
check('decrement', $m->decrement('php:n', 3), 12);
$flags = null; $cas = null;
check('gets', $m->get('php:a', $flags, $cas), 'alpha');
check('cas', $m->cas('php:a', 'gamma', 0, 0, $cas), true);
check('cas stale', $m->cas('php:a', 'delta', 0, 0, $cas), false);
check('after cas', $m->get('php:a'), 'gamma');
check('add existing', $m->add('php:a', 'x', 0, 0), false);
check('replace', $m->replace('php:b', 'beta2', 0, 0), true);
check('delete', $m->delete('php:b'), true);
check('deleted', $m->get('php:b'), false);
$array = ['nested' => [1, 2, 3]];
check('serialized set', $m->set('php:arr', $array, 0, 0), true);
check('serialized get', $m->get('php:arr'), $array);
echo "ok\n";
