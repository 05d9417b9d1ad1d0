/* The bench's slow-storage mode: every fsync/fdatasync of the process it is preloaded into
 * first sleeps DARKLEG_FSYNC_DELAY_MS (default 10) — an SD card or eMMC, where a flush takes
 * 5-30 ms — then does the real one. It keeps their count in DARKLEG_FSYNC_COUNT_FILE (rewritten
 * after each: a SIGKILLed agent runs no destructor), so the bench can show the shim was in the
 * path, and, with DARKLEG_FSYNC_LOG, appends one line per sync ("<file> <ms>") so the bench
 * can tell WAL syncs (commits) from database syncs (checkpoints). Built by the bench with the
 * system's cc. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static atomic_long syncs;

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static void slow(void) {
    static long ns = -1;
    if (ns < 0) {
        const char *e = getenv("DARKLEG_FSYNC_DELAY_MS");
        ns = (e ? atol(e) : 10) * 1000000L;
    }
    struct timespec t = {ns / 1000000000L, ns % 1000000000L};
    while (nanosleep(&t, &t) != 0) {
    }
}

/* After the real sync: count it, and log which file it was and how long it all took. */
static void done(int fd, double started) {
    long n = atomic_fetch_add(&syncs, 1) + 1;
    const char *p = getenv("DARKLEG_FSYNC_COUNT_FILE");
    FILE *f = p ? fopen(p, "w") : NULL;
    if (f) {
        fprintf(f, "%ld\n", n);
        fclose(f);
    }
    const char *logp = getenv("DARKLEG_FSYNC_LOG");
    FILE *log = logp ? fopen(logp, "a") : NULL;
    if (log) {
        char link[64], target[512];
        snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
        ssize_t k = readlink(link, target, sizeof target - 1);
        target[k > 0 ? k : 0] = 0;
        fprintf(log, "%s %.3f\n", k > 0 ? target : "?", now_ms() - started);
        fclose(log);
    }
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    double t = now_ms();
    slow();
    int r = real(fd);
    done(fd, t);
    return r;
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    double t = now_ms();
    slow();
    int r = real(fd);
    done(fd, t);
    return r;
}
