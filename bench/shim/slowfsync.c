/* The bench's slow-storage mode: every fsync/fdatasync of the process it is preloaded into
 * first sleeps DARKLEG_FSYNC_DELAY_MS (default 10) — an SD card or eMMC, where a flush takes
 * 5-30 ms — then does the real one. It keeps their count in DARKLEG_FSYNC_COUNT_FILE (rewritten
 * after each: a SIGKILLed agent runs no destructor), so the bench can show the shim was in the
 * path. Built by the bench with the system's cc. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static atomic_long syncs;

static void slow(void) {
    static long ns = -1;
    if (ns < 0) {
        const char *e = getenv("DARKLEG_FSYNC_DELAY_MS");
        ns = (e ? atol(e) : 10) * 1000000L;
    }
    struct timespec t = {ns / 1000000000L, ns % 1000000000L};
    while (nanosleep(&t, &t) != 0) {
    }
    long n = atomic_fetch_add(&syncs, 1) + 1;
    const char *p = getenv("DARKLEG_FSYNC_COUNT_FILE");
    FILE *f = p ? fopen(p, "w") : NULL;
    if (f) {
        fprintf(f, "%ld\n", n);
        fclose(f);
    }
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    slow();
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    slow();
    return real(fd);
}
