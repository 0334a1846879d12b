/* key -> server in libmemcached itself, for bench/vbucket.sh: memcached_server_by_key over
 * 100 and 10 000 servers (10.a.b.c:11211, as bench/drivers/examples/vbucket_lookup.rs names
 * them) with MEMCACHED_DISTRIBUTION_VIRTUAL_BUCKET (memcached_bucket_set, a balanced host map
 * of 1 024 and 65 536 buckets, no replicas, the default hash one-at-a-time) and, for
 * comparison, MEMCACHED_BEHAVIOR_KETAMA_WEIGHTED (at 100 servers only: libmemcached's
 * continuum holds MEMCACHED_CONTINUUM_SIZE / MEMCACHED_POINTS_PER_SERVER = 100 servers and
 * asserts beyond). The same 100 000 distinct keys as the Rust driver (user:%08d:profile),
 * ROUNDS rounds (7 unless given; bench/vbucket.sh gives 11), each timing every
 * configuration once, in an order shuffled from round to round, each timed pass over the
 * keys right after an untimed one (the steady state, as the Rust driver).
 *   vbucket_lookup [ROUNDS]
 * Prints one line per configuration:
 *   row libmemcached DISTRIBUTION SERVERS MEDIAN_NS MIN_NS MAX_NS   (ns per lookup)
 * or "row libmemcached ketama 10000 - - -" where it cannot run. Asserts nothing; no network
 * I/O: the addresses are only named. */
#define _POSIX_C_SOURCE 199309L
#include <libmemcached/memcached.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define KEYS 100000
#define MAX_ROUNDS 64

struct config {
    const char *name;
    int servers;
    uint32_t buckets; /* 0: ketama */
    memcached_st *memc;
    double times[MAX_ROUNDS];
};

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* A client of n servers: ketama (buckets 0) or a balanced map of `buckets` (bucket b owned by
 * server b % n, as mcshm's BucketMap::balanced). NULL where libmemcached cannot. */
static memcached_st *client(int n, uint32_t buckets) {
    if (buckets == 0 && (long)n * MEMCACHED_POINTS_PER_SERVER > MEMCACHED_CONTINUUM_SIZE) return NULL;
    memcached_st *memc = memcached_create(NULL);
    if (buckets == 0) memcached_behavior_set(memc, MEMCACHED_BEHAVIOR_KETAMA_WEIGHTED, 1);
    memcached_server_list_st list = NULL;
    for (int i = 0; i < n; i++) {
        char host[32];
        memcached_return_t rc;
        snprintf(host, sizeof host, "10.%d.%d.%d", i >> 16, (i >> 8) & 255, i & 255);
        list = memcached_server_list_append(list, host, 11211, &rc);
        if (rc != MEMCACHED_SUCCESS) {
            fprintf(stderr, "libmemcached refused server %d\n", i);
            exit(3);
        }
    }
    if (memcached_server_push(memc, list) != MEMCACHED_SUCCESS) {
        fprintf(stderr, "memcached_server_push failed\n");
        exit(3);
    }
    memcached_server_list_free(list);
    if (buckets > 0) {
        uint32_t *host_map = malloc(sizeof *host_map * buckets);
        for (uint32_t b = 0; b < buckets; b++) host_map[b] = b % (uint32_t)n;
        if (memcached_bucket_set(memc, host_map, NULL, buckets, 0) != MEMCACHED_SUCCESS) {
            fprintf(stderr, "memcached_bucket_set failed\n");
            exit(3);
        }
        free(host_map);
    }
    return memc;
}

int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 7;
    if (rounds < 1 || rounds > MAX_ROUNDS) {
        fprintf(stderr, "usage: vbucket_lookup [ROUNDS (1..%d)]\n", MAX_ROUNDS);
        return 2;
    }
    struct config configs[] = {
        {"ketama", 100, 0, NULL, {0}},         {"vbucket-1024", 100, 1024, NULL, {0}},
        {"vbucket-65536", 100, 65536, NULL, {0}}, {"ketama", 10000, 0, NULL, {0}},
        {"vbucket-1024", 10000, 1024, NULL, {0}}, {"vbucket-65536", 10000, 65536, NULL, {0}},
    };
    const int count = sizeof configs / sizeof configs[0];
    char(*keys)[32] = malloc(sizeof(*keys) * KEYS);
    size_t *lengths = malloc(sizeof *lengths * KEYS);
    for (int i = 0; i < KEYS; i++) {
        snprintf(keys[i], sizeof keys[i], "user:%08d:profile", i);
        lengths[i] = strlen(keys[i]);
    }
    for (int c = 0; c < count; c++) {
        configs[c].memc = client(configs[c].servers, configs[c].buckets);
        memcached_return_t rc;
        if (configs[c].memc) memcached_server_by_key(configs[c].memc, "warm:up", 7, &rc);
    }
    unsigned long sink = 0;
    int order[sizeof configs / sizeof configs[0]];
    for (int c = 0; c < count; c++) order[c] = c;
    uint64_t seed = 0x9e3779b97f4a7c15u;
    for (int round = 0; round < rounds; round++) {
        for (int i = count - 1; i > 0; i--) { /* Fisher-Yates, xorshift64 */
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            int j = (int)(seed % (uint64_t)(i + 1)), t = order[i];
            order[i] = order[j];
            order[j] = t;
        }
        for (int step = 0; step < count; step++) {
            struct config *config = &configs[order[step]];
            if (!config->memc) continue;
            for (int pass = 0; pass < 2; pass++) { /* the first warms the caches, not kept */
                double t = now();
                for (int i = 0; i < KEYS; i++) {
                    memcached_return_t rc;
                    const memcached_instance_st *s =
                        memcached_server_by_key(config->memc, keys[i], lengths[i], &rc);
                    sink += (unsigned long)(uintptr_t)s;
                }
                config->times[round] = (now() - t) / KEYS * 1e9;
            }
        }
    }
    for (int c = 0; c < count; c++) {
        struct config *config = &configs[c];
        if (!config->memc) {
            printf("row libmemcached %s %d - - -\n", config->name, config->servers);
            continue;
        }
        qsort(config->times, (size_t)rounds, sizeof(double), by_value);
        printf("row libmemcached %s %d %.0f %.0f %.0f\n", config->name, config->servers,
               config->times[rounds / 2], config->times[0], config->times[rounds - 1]);
        memcached_free(config->memc);
    }
    free(keys);
    free(lengths);
    return sink == 0;
}
