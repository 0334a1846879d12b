/* The short-freeze writer of tests/short_freeze.rs, through the C API:
 *   freeze_writer DIR DOMAIN STOPFILE
 * sets key "k" to 1, 2, 3, ... and after each acknowledged set reads it back: a number older
 * than the last acknowledged set is a stale read. Runs until STOPFILE exists (at most 600 s),
 * then prints "acknowledged N stale M" and the first stale reads, one per line. */
#include <mcshm.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: freeze_writer DIR DOMAIN STOPFILE\n");
        return 2;
    }
    mcshm_client *client = NULL;
    int rc = mcshm_open_dir(argv[1], argv[2], &client);
    if (rc != MCSHM_OK) {
        fprintf(stderr, "open: %s\n", mcshm_strerror(rc));
        return 1;
    }
    time_t started = time(NULL);
    unsigned long long n = 0, acknowledged = 0, stale = 0;
    char stale_lines[10][96];
    while (access(argv[3], F_OK) != 0 && time(NULL) - started < 600) {
        n++;
        char value[32];
        int len = snprintf(value, sizeof value, "%llu", n);
        if (mcshm_set(client, "k", 1, value, (size_t)len, 0, 0) != MCSHM_OK) {
            continue;
        }
        acknowledged++;
        char *read = NULL;
        size_t read_len = 0;
        if (mcshm_get(client, "k", 1, &read, &read_len, NULL) == MCSHM_OK) {
            char text[32] = {0};
            memcpy(text, read, read_len < 31 ? read_len : 31);
            unsigned long long got = strtoull(text, NULL, 10);
            if (got < n) {
                if (stale < 10) {
                    snprintf(stale_lines[stale], sizeof stale_lines[0],
                             "read %llu after set %llu was acknowledged", got, n);
                }
                stale++;
            }
            mcshm_free(read);
        }
    }
    printf("acknowledged %llu stale %llu\n", acknowledged, stale);
    for (unsigned long long i = 0; i < stale && i < 10; i++) {
        printf("%s\n", stale_lines[i]);
    }
    mcshm_close(client);
    return 0;
}
