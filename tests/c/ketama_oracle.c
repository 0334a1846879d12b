/* The key->server oracle: libmemcached itself.
 * Usage: ketama_oracle [--modula HASH | --ketama HASH | --spy] HOST:PORT:WEIGHT...
 * reads keys (one per line) on stdin, prints "host:port" of the server libmemcached picks for
 * each: with MEMCACHED_BEHAVIOR_KETAMA_WEIGHTED (libketama-compatible), or with --modula,
 * MEMCACHED_DISTRIBUTION_MODULA and MEMCACHED_BEHAVIOR_HASH = HASH (one-at-a-time, md5, crc,
 * fnv1a_32, murmur, fnv1_64, fnv1a_64, fnv1_32, jenkins, murmur3; a hash the library refuses,
 * compiled out of it, fails the oracle); --ketama HASH: MEMCACHED_BEHAVIOR_KETAMA (unweighted) and
 * MEMCACHED_BEHAVIOR_HASH = HASH; --spy: KETAMA_WEIGHTED then
 * MEMCACHED_DISTRIBUTION_CONSISTENT_KETAMA_SPY.
 * No network I/O. */
#include <libmemcached/memcached.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    memcached_st *memc = memcached_create(NULL);
    int first = 1;
    int modula = argc > 2 && strcmp(argv[1], "--modula") == 0;
    int unweighted = argc > 2 && strcmp(argv[1], "--ketama") == 0;
    if (modula || unweighted) {
        const char *names[] = {"one-at-a-time", "md5", "crc", "fnv1a_32", "murmur",
                               "fnv1_64", "fnv1a_64", "fnv1_32", "jenkins", "murmur3"};
        const memcached_hash_t hashes[] = {MEMCACHED_HASH_DEFAULT, MEMCACHED_HASH_MD5, MEMCACHED_HASH_CRC,
                                           MEMCACHED_HASH_FNV1A_32, MEMCACHED_HASH_MURMUR, MEMCACHED_HASH_FNV1_64,
                                           MEMCACHED_HASH_FNV1A_64, MEMCACHED_HASH_FNV1_32, MEMCACHED_HASH_JENKINS,
                                           MEMCACHED_HASH_MURMUR3};
        int found = -1;
        for (int h = 0; h < (int)(sizeof names / sizeof *names); h++)
            if (strcmp(argv[2], names[h]) == 0) found = h;
        if (found < 0) {
            fprintf(stderr, "unknown hash %s\n", argv[2]);
            return 2;
        }
        if (modula)
            memcached_behavior_set(memc, MEMCACHED_BEHAVIOR_DISTRIBUTION, MEMCACHED_DISTRIBUTION_MODULA);
        else
            memcached_behavior_set(memc, MEMCACHED_BEHAVIOR_KETAMA, 1);
        if (memcached_behavior_set(memc, MEMCACHED_BEHAVIOR_HASH, hashes[found]) != MEMCACHED_SUCCESS) {
            fprintf(stderr, "libmemcached refused the hash %s (compiled out?)\n", argv[2]);
            return 2;
        }
        first = 3;
    } else if (argc > 1 && strcmp(argv[1], "--spy") == 0) {
        memcached_behavior_set(memc, MEMCACHED_BEHAVIOR_KETAMA_WEIGHTED, 1);
        memcached_behavior_set(memc, MEMCACHED_BEHAVIOR_DISTRIBUTION, MEMCACHED_DISTRIBUTION_CONSISTENT_KETAMA_SPY);
        first = 2;
    } else {
        memcached_behavior_set(memc, MEMCACHED_BEHAVIOR_KETAMA_WEIGHTED, 1);
    }
    for (int i = first; i < argc; i++) {
        char *spec = strdup(argv[i]);
        char *weight = strrchr(spec, ':');
        *weight++ = '\0';
        char *port = strrchr(spec, ':');
        *port++ = '\0';
        if (memcached_server_add_with_weight(memc, spec, (in_port_t)atoi(port), (uint32_t)atoi(weight)) != MEMCACHED_SUCCESS) {
            fprintf(stderr, "cannot add %s\n", argv[i]);
            return 2;
        }
        free(spec);
    }
    char line[512];
    while (fgets(line, sizeof line, stdin)) {
        size_t len = strcspn(line, "\n");
        memcached_return_t rc;
        const memcached_instance_st *server = memcached_server_by_key(memc, line, len, &rc);
        if (server == NULL) {
            fprintf(stderr, "no server for key: %s\n", memcached_strerror(memc, rc));
            return 3;
        }
        printf("%s:%u\n", memcached_server_name(server), (unsigned)memcached_server_port(server));
    }
    memcached_free(memc);
    return 0;
}
