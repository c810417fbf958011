/* A daemon that crashes at once: appends its start and exit times (CLOCK_MONOTONIC, ns) to the
 * file named by $CRASHLOG, then exits 1. The gap between one run's exit and the next run's
 * start is the supervisor's crash-to-restart time. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static long long now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

int main(void) {
    long long start = now();
    const char *path = getenv("CRASHLOG");
    if (!path) return 2;
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT, 0644);
    if (fd < 0) return 2;
    char line[64];
    int n = snprintf(line, sizeof line, "%lld %lld\n", start, now());
    write(fd, line, n);
    close(fd);
    return 1;
}
