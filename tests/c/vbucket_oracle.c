/* The key->server oracle for virtual buckets: libmemcached itself.
 * Usage: vbucket_oracle HASH BUCKETS OWNERS HOST:PORT...
 *   HASH     one-at-a-time, md5, crc, fnv1a_32, murmur, fnv1_64, fnv1a_64, fnv1_32, jenkins
 *            or murmur3 (MEMCACHED_BEHAVIOR_HASH)
 *   BUCKETS  the bucket count (a power of two)
 *   OWNERS   the host map: BUCKETS server positions, comma-separated (bucket 0's first)
 *   HOST:PORT the servers, added in this order with memcached_server_add
 * then memcached_bucket_set(memc, OWNERS, NULL, BUCKETS, 0) (no forward map, no replicas:
 * libmemcached routes by the host map's master column only). Reads keys (one per line) on
 * stdin and prints "host:port" of the server libmemcached picks for each
 * (memcached_server_by_key), after checking that memcached_generate_hash names the same
 * server. No network I/O. */
#include <libmemcached/memcached.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: vbucket_oracle HASH BUCKETS OWNERS HOST:PORT...\n");
        return 2;
    }
    const char *names[] = {"one-at-a-time", "md5", "crc", "fnv1a_32", "murmur",
                           "fnv1_64", "fnv1a_64", "fnv1_32", "jenkins", "murmur3"};
    const memcached_hash_t hashes[] = {MEMCACHED_HASH_DEFAULT, MEMCACHED_HASH_MD5, MEMCACHED_HASH_CRC,
                                       MEMCACHED_HASH_FNV1A_32, MEMCACHED_HASH_MURMUR, MEMCACHED_HASH_FNV1_64,
                                       MEMCACHED_HASH_FNV1A_64, MEMCACHED_HASH_FNV1_32, MEMCACHED_HASH_JENKINS,
                                       MEMCACHED_HASH_MURMUR3};
    int found = -1;
    for (int h = 0; h < (int)(sizeof names / sizeof *names); h++)
        if (strcmp(argv[1], names[h]) == 0) found = h;
    if (found < 0) {
        fprintf(stderr, "unknown hash %s\n", argv[1]);
        return 2;
    }
    uint32_t buckets = (uint32_t)strtoul(argv[2], NULL, 10);
    uint32_t *host_map = calloc(buckets, sizeof *host_map);
    char *cursor = argv[3];
    for (uint32_t b = 0; b < buckets; b++) {
        char *end;
        host_map[b] = (uint32_t)strtoul(cursor, &end, 10);
        if (end == cursor || (b + 1 < buckets && *end != ',') || (b + 1 == buckets && *end != '\0')) {
            fprintf(stderr, "the host map needs %u comma-separated owners\n", buckets);
            return 2;
        }
        cursor = end + 1;
    }

    memcached_st *memc = memcached_create(NULL);
    for (int i = 4; i < argc; i++) {
        char *spec = strdup(argv[i]);
        char *port = strrchr(spec, ':');
        *port++ = '\0';
        if (memcached_server_add(memc, spec, (in_port_t)atoi(port)) != MEMCACHED_SUCCESS) {
            fprintf(stderr, "cannot add %s\n", argv[i]);
            return 2;
        }
        free(spec);
    }
    for (uint32_t b = 0; b < buckets; b++)
        if (host_map[b] >= memcached_server_count(memc)) {
            fprintf(stderr, "bucket %u: no server %u\n", b, host_map[b]);
            return 2;
        }
    if (memcached_behavior_set(memc, MEMCACHED_BEHAVIOR_HASH, hashes[found]) != MEMCACHED_SUCCESS ||
        memcached_bucket_set(memc, host_map, NULL, buckets, 0) != MEMCACHED_SUCCESS) {
        fprintf(stderr, "libmemcached refused the hash or the bucket map\n");
        return 2;
    }
    if (memcached_behavior_get_distribution(memc) != MEMCACHED_DISTRIBUTION_VIRTUAL_BUCKET) {
        fprintf(stderr, "memcached_bucket_set did not select MEMCACHED_DISTRIBUTION_VIRTUAL_BUCKET\n");
        return 2;
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
        uint32_t index = memcached_generate_hash(memc, line, len);
        if (memcached_server_instance_by_position(memc, index) != server) {
            fprintf(stderr, "memcached_generate_hash and memcached_server_by_key disagree\n");
            return 3;
        }
        printf("%s:%u\n", memcached_server_name(server), (unsigned)memcached_server_port(server));
    }
    memcached_free(memc);
    free(host_map);
    return 0;
}
