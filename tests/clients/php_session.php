<?php
// One PHP request with php-memcached's session handler and its defaults (the binary protocol,
// session locking) against PORT: starts session ID, increments its counter, closes it, and
// prints how long session_start waited (seconds). Usage: php php_session.php PORT ID
ini_set('session.save_handler', 'memcached');
ini_set('session.save_path', '127.0.0.1:' . $argv[1]);
session_id($argv[2]);
$started = microtime(true);
if (!session_start()) {
    fwrite(STDERR, "session_start failed\n");
    exit(1);
}
$waited = microtime(true) - $started;
$_SESSION['n'] = ($_SESSION['n'] ?? 0) + 1;
if (!session_write_close()) {
    fwrite(STDERR, "session_write_close failed\n");
    exit(1);
}
printf("%.3f\n", $waited);
