/* A long-running C daemon's use of libmcshm, as tests/capi.rs drives it:
 *   daemon DIR DOMAIN
 * 1. opens the domain, prints "ready VERSION", waits for a change made by mcadmin, prints
 *    "changed VERSION" and the servers of a snapshot;
 * 2. sets and gets a key through the real memcached, then gets/cas, append/prepend, counters
 *    with an initial value and get_multi; prints "roundtrip ok";
 * 3. reads a line from stdin (the test kills memcached first), then fails a get and prints
 *    "callback HOST:PORT" once the failure callback has run;
 * 4. checks that every call refuses null and malformed arguments, prints "args ok".
 * Any failure prints "FAIL ..." and exits 1. Built with the system compiler through pkg-config. */
#include <mcshm.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(cond, ...) do { if (!(cond)) { printf("FAIL line %d: ", __LINE__); printf(__VA_ARGS__); printf("\n"); fflush(stdout); exit(1); } } while (0)

static int callbacks = 0;
static char failed_server[300];
static int failed_errno = 0;

static void on_failure(const char *host, int port, int error, void *user) {
    callbacks++;
    snprintf(failed_server, sizeof failed_server, "%s:%d", host, port);
    failed_errno = error;
    CHECK(user == (void *)&callbacks, "callback user pointer");
}

static int multi[4];
static char multi_value[4][16];

static void on_item(size_t index, const char *value, size_t value_len, uint32_t flags, uint64_t cas, void *user) {
    (void)flags;
    (void)cas;
    CHECK(user == (void *)&callbacks, "item user pointer");
    CHECK(index < 4 && value_len < sizeof multi_value[0], "item index %zu", index);
    multi[index]++;
    memcpy(multi_value[index], value, value_len);
    multi_value[index][value_len] = 0;
}

static void check_args(mcshm_client *c) {
    mcshm_client *none = NULL;
    char buf[64], *value = NULL;
    size_t len = 0;
    int port = 0;
    uint64_t v = 0;
    mcshm_snapshot *snap = NULL;
    mcshm_server server;
    CHECK(mcshm_open(NULL, &none) == MCSHM_EINVAL, "open null domain");
    CHECK(mcshm_open("x", NULL) == MCSHM_EINVAL, "open null result");
    CHECK(mcshm_open_dir("/nonexistent", "../bad", &none) == MCSHM_ENODOMAIN, "bad domain name");
    CHECK(strstr(mcshm_strerror(MCSHM_ENODOMAIN), "invalid domain name '../bad'") != NULL,
          "strerror names the bad domain name: %s", mcshm_strerror(MCSHM_ENODOMAIN));
    CHECK(mcshm_open_dir("/nonexistent", "nodomain", &none) == MCSHM_ENODOMAIN, "missing domain");
    CHECK(strcmp(mcshm_strerror(MCSHM_ENODOMAIN),
                 "no such domain \"nodomain\" in /nonexistent (set MCSHM_DIR, or pass the directory "
                 "to mcshm_open_dir)") == 0,
          "strerror names the directory looked in: %s", mcshm_strerror(MCSHM_ENODOMAIN));
    CHECK(mcshm_open_servers(NULL, &none) == MCSHM_EINVAL, "servers null");
    CHECK(mcshm_open_servers("host:0", &none) == MCSHM_EINVAL, "servers bad port");
    CHECK(none == NULL, "no handle on failure");
    CHECK(mcshm_version(NULL, &v) == MCSHM_EINVAL, "version null handle");
    CHECK(mcshm_version(c, NULL) == MCSHM_EINVAL, "version null out");
    CHECK(mcshm_wait(NULL, 0, 0, &v) == MCSHM_EINVAL, "wait null");
    CHECK(mcshm_snapshot_take(NULL, &snap) == MCSHM_EINVAL, "snapshot null handle");
    CHECK(mcshm_snapshot_take(c, NULL) == MCSHM_EINVAL, "snapshot null out");
    CHECK(mcshm_snapshot_len(NULL) == 0, "len null");
    CHECK(mcshm_snapshot_version(NULL) == 0, "snapshot version null");
    mcshm_client *list = NULL;
    CHECK(mcshm_open_servers("127.0.0.1:1", &list) == MCSHM_OK, "open a server list");
    CHECK(mcshm_wait(list, 0, 0, &v) == MCSHM_EINVAL, "wait on a server list");
    CHECK(mcshm_version(list, &v) == MCSHM_OK && v == 0, "version of a server list");
    mcshm_close(list);
    CHECK(mcshm_snapshot_server(NULL, 0, &server) == MCSHM_EINVAL, "server null snapshot");
    CHECK(mcshm_snapshot_take(c, &snap) == MCSHM_OK, "snapshot");
    CHECK(mcshm_snapshot_server(snap, 999, &server) == MCSHM_EINVAL, "server index out of range");
    CHECK(mcshm_snapshot_server(snap, 0, NULL) == MCSHM_EINVAL, "server null out");
    mcshm_snapshot_free(snap);
    mcshm_snapshot_free(NULL);
    CHECK(mcshm_server_for_key(c, NULL, 3, buf, sizeof buf, &port) == MCSHM_EINVAL, "for_key null key");
    CHECK(mcshm_server_for_key(c, "k", 1, buf, 1, &port) == MCSHM_ERANGE, "for_key small buffer");
    CHECK(mcshm_server_for_key(c, "k", 1, NULL, 10, &port) == MCSHM_EINVAL, "for_key null buffer");
    CHECK(mcshm_get(NULL, "k", 1, &value, &len, NULL) == MCSHM_EINVAL, "get null handle");
    CHECK(mcshm_get(c, NULL, 1, &value, &len, NULL) == MCSHM_EINVAL, "get null key");
    CHECK(mcshm_get(c, "k", 1, NULL, &len, NULL) == MCSHM_EINVAL, "get null value");
    CHECK(mcshm_get(c, "k", (size_t)-1, &value, &len, NULL) == MCSHM_EINVAL, "get huge length");
    CHECK(mcshm_get(c, "a b", 3, &value, &len, NULL) == MCSHM_EBADKEY, "get bad key");
    CHECK(mcshm_get(c, "", 0, &value, &len, NULL) == MCSHM_EBADKEY, "get empty key");
    CHECK(mcshm_set(c, "a\r\nflush_all", 12, "v", 1, 0, 0) == MCSHM_EBADKEY, "set injected key");
    CHECK(mcshm_set(c, "k", 1, NULL, 5, 0, 0) == MCSHM_EINVAL, "set null value");
    CHECK(mcshm_add(NULL, "k", 1, "v", 1, 0, 0) == MCSHM_EINVAL, "add null");
    CHECK(mcshm_replace(NULL, "k", 1, "v", 1, 0, 0) == MCSHM_EINVAL, "replace null");
    CHECK(mcshm_delete(NULL, "k", 1) == MCSHM_EINVAL, "delete null");
    CHECK(mcshm_delete(c, NULL, 1) == MCSHM_EINVAL, "delete null key");
    CHECK(mcshm_incr(NULL, "k", 1, 1, &v) == MCSHM_EINVAL, "incr null");
    CHECK(mcshm_decr(c, NULL, 1, 1, &v) == MCSHM_EINVAL, "decr null key");
    CHECK(mcshm_touch(NULL, "k", 1, 0) == MCSHM_EINVAL, "touch null");
    CHECK(mcshm_set_failure_callback(NULL, NULL, NULL) == MCSHM_EINVAL, "callback null");
    uint64_t unique;
    size_t one = 1;
    const char *key = "k";
    CHECK(mcshm_gets(c, "k", 1, &value, &len, NULL, NULL) == MCSHM_EINVAL, "gets null cas");
    CHECK(mcshm_cas(NULL, "k", 1, "v", 1, 0, 0, 1) == MCSHM_EINVAL, "cas null");
    CHECK(mcshm_append(c, "a b", 3, "v", 1) == MCSHM_EBADKEY, "append bad key");
    CHECK(mcshm_prepend(c, "k", 1, NULL, 1) == MCSHM_EINVAL, "prepend null value");
    CHECK(mcshm_incr_initial(NULL, "k", 1, 1, 0, 0, &unique) == MCSHM_EINVAL, "incr_initial null");
    CHECK(mcshm_get_multi(c, NULL, &one, 1, on_item, NULL, NULL) == MCSHM_EINVAL, "multi null keys");
    CHECK(mcshm_get_multi(c, &key, &one, 0, on_item, NULL, NULL) == MCSHM_EINVAL, "multi no keys");
    CHECK(mcshm_get_multi(c, &key, &one, 1, NULL, NULL, NULL) == MCSHM_EINVAL, "multi null callback");
    CHECK(strcmp(mcshm_strerror(MCSHM_MISS), "not found") == 0, "strerror");
    CHECK(strlen(mcshm_strerror(12345)) > 0, "strerror unknown");
    mcshm_close(NULL);
    mcshm_free(NULL);
}

int main(int argc, char **argv) {
    CHECK(argc == 3, "usage: daemon DIR DOMAIN");
    mcshm_client *c = NULL;
    int rc = mcshm_open_dir(argv[1], argv[2], &c);
    CHECK(rc == MCSHM_OK, "open: %s", mcshm_strerror(rc));
    CHECK(mcshm_set_failure_callback(c, on_failure, &callbacks) == MCSHM_OK, "set callback");
    uint64_t version = 0;
    CHECK(mcshm_version(c, &version) == MCSHM_OK, "version");
    printf("ready %llu\n", (unsigned long long)version);
    fflush(stdout);

    uint64_t now = 0;
    rc = mcshm_wait(c, version, 20000, &now);
    CHECK(rc == MCSHM_OK && now > version, "wait: %s (version %llu)", mcshm_strerror(rc), (unsigned long long)now);
    printf("changed %llu\n", (unsigned long long)now);
    mcshm_snapshot *snap = NULL;
    CHECK(mcshm_snapshot_take(c, &snap) == MCSHM_OK, "snapshot");
    CHECK(mcshm_snapshot_version(snap) == now, "snapshot version");
    for (size_t i = 0; i < mcshm_snapshot_len(snap); i++) {
        mcshm_server s;
        CHECK(mcshm_snapshot_server(snap, i, &s) == MCSHM_OK, "server %zu", i);
        printf("server %s:%d weight %d state %d\n", s.host, s.port, s.weight, s.state);
    }
    mcshm_snapshot_free(snap);

    const char value[] = "from C\0with a NUL\r\n";
    CHECK(mcshm_set(c, "c:key", 5, value, sizeof value, 42, 0) == MCSHM_OK, "set");
    char *got = NULL;
    size_t got_len = 0;
    uint32_t flags = 0;
    rc = mcshm_get(c, "c:key", 5, &got, &got_len, &flags);
    CHECK(rc == MCSHM_OK, "get: %s", mcshm_strerror(rc));
    CHECK(got_len == sizeof value && memcmp(got, value, got_len) == 0 && flags == 42, "value round trip");
    mcshm_free(got);
    CHECK(mcshm_get(c, "c:missing", 9, &got, &got_len, NULL) == MCSHM_MISS, "miss");
    CHECK(mcshm_add(c, "c:key", 5, "x", 1, 0, 0) == MCSHM_NOT_STORED, "add existing");
    CHECK(mcshm_set(c, "c:n", 3, "41", 2, 0, 0) == MCSHM_OK, "set counter");
    uint64_t n = 0;
    CHECK(mcshm_incr(c, "c:n", 3, 1, &n) == MCSHM_OK && n == 42, "incr");
    CHECK(mcshm_decr(c, "c:n", 3, 2, &n) == MCSHM_OK && n == 40, "decr");
    CHECK(mcshm_touch(c, "c:n", 3, 100) == MCSHM_OK, "touch");
    CHECK(mcshm_replace(c, "c:n", 3, "1", 1, 0, 0) == MCSHM_OK, "replace");
    CHECK(mcshm_delete(c, "c:n", 3) == MCSHM_OK, "delete");
    CHECK(mcshm_delete(c, "c:n", 3) == MCSHM_MISS, "delete again");
    /* gets / cas: the unique from gets stores once; a second cas with it is EXISTS. */
    uint64_t unique = 0;
    CHECK(mcshm_gets(c, "c:key", 5, &got, &got_len, &flags, &unique) == MCSHM_OK && unique != 0, "gets");
    mcshm_free(got);
    CHECK(mcshm_cas(c, "c:key", 5, "v2", 2, 7, 0, unique) == MCSHM_OK, "cas with the unique");
    CHECK(mcshm_cas(c, "c:key", 5, "v3", 2, 7, 0, unique) == MCSHM_EXISTS, "cas with an old unique");
    CHECK(mcshm_cas(c, "c:gone", 6, "v", 1, 0, 0, 1) == MCSHM_MISS, "cas on a missing key");
    /* append / prepend */
    CHECK(mcshm_append(c, "c:key", 5, ">", 1) == MCSHM_OK, "append");
    CHECK(mcshm_prepend(c, "c:key", 5, "<", 1) == MCSHM_OK, "prepend");
    CHECK(mcshm_append(c, "c:gone", 6, "x", 1) == MCSHM_NOT_STORED, "append to a missing key");
    CHECK(mcshm_get(c, "c:key", 5, &got, &got_len, &flags) == MCSHM_OK, "get after append");
    CHECK(got_len == 4 && memcmp(got, "<v2>", 4) == 0 && flags == 7, "append and prepend");
    mcshm_free(got);
    /* counters with an initial value */
    CHECK(mcshm_incr_initial(c, "c:count", 7, 5, 100, 0, &n) == MCSHM_OK && n == 100, "incr creates");
    CHECK(mcshm_incr_initial(c, "c:count", 7, 5, 100, 0, &n) == MCSHM_OK && n == 105, "incr adds");
    CHECK(mcshm_decr_initial(c, "c:count", 7, 200, 9, 0, &n) == MCSHM_OK && n == 0, "decr stops at 0");
    CHECK(mcshm_decr_initial(c, "c:down", 6, 1, 9, 0, &n) == MCSHM_OK && n == 9, "decr creates");
    /* get_multi: every key found is called back with its index; misses are not. */
    const char *keys[] = {"c:key", "c:missing", "c:count", "c:down"};
    size_t lens[] = {5, 9, 7, 6};
    size_t hits = 0;
    memset(multi, 0, sizeof multi);
    CHECK(mcshm_get_multi(c, keys, lens, 4, on_item, &callbacks, &hits) == MCSHM_OK, "get_multi");
    CHECK(hits == 3 && multi[0] == 1 && multi[1] == 0 && multi[2] == 1 && multi[3] == 1, "get_multi hits");
    CHECK(strcmp(multi_value[3], "9") == 0, "get_multi value %s", multi_value[3]);
    char host[256];
    int port = 0;
    CHECK(mcshm_server_for_key(c, "c:key", 5, host, sizeof host, &port) == MCSHM_OK, "server for key");
    printf("roundtrip ok %s:%d\n", host, port);
    fflush(stdout);

    char line[64];
    CHECK(fgets(line, sizeof line, stdin) != NULL, "stdin closed");
    rc = mcshm_get(c, "c:key", 5, &got, &got_len, NULL);
    CHECK(rc == MCSHM_ESERVER, "get from a killed server: %s", mcshm_strerror(rc));
    CHECK(callbacks == 1, "callbacks %d", callbacks);
    CHECK(failed_errno == ECONNREFUSED || failed_errno == ECONNRESET || failed_errno == EPIPE,
          "callback errno %d", failed_errno);
    printf("callback %s\n", failed_server);

    check_args(c);
    printf("args ok\n");
    mcshm_close(c);
    fflush(stdout);
    return 0;
}
