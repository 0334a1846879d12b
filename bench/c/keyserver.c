/* key -> server from C: libmemcached (memcached_server_by_key, MEMCACHED_BEHAVIOR_KETAMA_WEIGHTED)
 * against libmcshm (mcshm_server_for_key on the same list), 100 000 distinct keys, runs
 * interleaved. Usage: keyserver hostname|ipv4|ipv6 N. Prints one line; asserts nothing.
 * Built and run by bench/keyserver.sh. No network I/O: the addresses are only looked up. */
#define _POSIX_C_SOURCE 199309L
#include <libmemcached/memcached.h>
#include <mcshm.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define KEYS 100000

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void host_of(const char *kind, int i, char *out, size_t len) {
    if (strcmp(kind, "hostname") == 0)
        snprintf(out, len, "cache%d.example.com", i);
    else if (strcmp(kind, "ipv4") == 0)
        snprintf(out, len, "10.1.%d.%d", i / 256, i % 256);
    else
        snprintf(out, len, "2001:db8::%x", i + 1);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: keyserver hostname|ipv4|ipv6 N\n");
        return 2;
    }
    const char *kind = argv[1];
    int n = atoi(argv[2]);
    memcached_st *memc = memcached_create(NULL);
    memcached_behavior_set(memc, MEMCACHED_BEHAVIOR_KETAMA_WEIGHTED, 1);
    /* libmemcached asserts (aborts) beyond this many servers: time libmcshm alone there. */
    int with_libmemcached = (long)n * MEMCACHED_POINTS_PER_SERVER <= MEMCACHED_CONTINUUM_SIZE;
    size_t spec_len = (size_t)n * 64 + 1;
    char *spec = calloc(spec_len, 1);
    char host[128];
    for (int i = 0; i < n; i++) {
        host_of(kind, i, host, sizeof host);
        if (with_libmemcached && memcached_server_add_with_weight(memc, host, 11211, 1) != MEMCACHED_SUCCESS) {
            fprintf(stderr, "libmemcached refused server %d\n", i);
            return 3;
        }
        char entry[160];
        if (strcmp(kind, "ipv6") == 0)
            snprintf(entry, sizeof entry, "%s[%s]:11211", i ? "," : "", host);
        else
            snprintf(entry, sizeof entry, "%s%s:11211", i ? "," : "", host);
        strcat(spec, entry);
    }
    struct mcshm_client *client;
    if (mcshm_open_servers(spec, &client) != MCSHM_OK) {
        fprintf(stderr, "mcshm_open_servers failed\n");
        return 3;
    }
    char (*keys)[32] = malloc(sizeof(*keys) * KEYS);
    for (int i = 0; i < KEYS; i++)
        snprintf(keys[i], sizeof keys[i], "user:%08d:profile", i);
    double best_lm = 1e9, best_ms = 1e9;
    unsigned long sink = 0;
    for (int round = 0; round < 5; round++) {
        double t = now();
        for (int i = 0; with_libmemcached && i < KEYS; i++) {
            memcached_return_t rc;
            const memcached_instance_st *s = memcached_server_by_key(memc, keys[i], strlen(keys[i]), &rc);
            sink += memcached_server_port(s);
        }
        double lm = (now() - t) / KEYS * 1e9;
        t = now();
        for (int i = 0; i < KEYS; i++) {
            char name[256];
            int port;
            if (mcshm_server_for_key(client, keys[i], strlen(keys[i]), name, sizeof name, &port) != MCSHM_OK)
                return 4;
            sink += (unsigned long)port;
        }
        double ms = (now() - t) / KEYS * 1e9;
        if (lm < best_lm) best_lm = lm;
        if (ms < best_ms) best_ms = ms;
    }
    if (with_libmemcached)
        printf("| %s | %d | %.0f ns | %.0f ns | %.2f |\n", kind, n, best_lm, best_ms, best_lm / best_ms);
    else
        printf("| %s | %d | aborts (more than %d servers) | %.0f ns | - |\n", kind, n,
               MEMCACHED_CONTINUUM_SIZE / MEMCACHED_POINTS_PER_SERVER, best_ms);
    mcshm_close(client);
    memcached_free(memc);
    return sink == 0;
}
