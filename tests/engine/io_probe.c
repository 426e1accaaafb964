/* Disk I/O from inside a VPS, timed by the guest's own clock (built statically on the host by
 * tests/engine/test_walls_io.py; busybox guests have no dd that reports a rate per operation).
 *
 *   io-probe write PATH REGION BLOCK TOTAL SECONDS FLAGS [STOPFILE]
 *       write BLOCK bytes at a time over the first REGION bytes of PATH, round and round,
 *       until TOTAL bytes (0: no cap) or SECONDS (0: no cap) are reached, or STOPFILE exists.
 *       FLAGS: "d" O_DIRECT, "s" fsync after every write, "y" sync() at the end instead of
 *       fsync (the kernel's flusher threads then write the pages back), "-" none of these.
 *       Prints: bytes= ops= seconds=
 *   io-probe read PATH BLOCK TOTAL FLAGS
 *       read TOTAL bytes of PATH, BLOCK at a time ("d": O_DIRECT). Prints: bytes= ops= seconds=
 *   io-probe fsync PATH COUNT GAP_US
 *       COUNT times: write 4 KiB at the next of 256 slots and fsync, then sleep GAP_US. Prints
 *       each fsync's latency in microseconds, one per line after "latencies_us", and a summary.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *aligned(size_t size) {
    void *buf;
    if (posix_memalign(&buf, 4096, size) != 0) {
        perror("posix_memalign");
        exit(2);
    }
    memset(buf, 0x5a, size);
    return buf;
}

static int do_write(int argc, char **argv) {
    if (argc != 8 && argc != 9) return 64;
    const char *stop = argc == 9 ? argv[8] : NULL;
    long long region = atoll(argv[3]), block = atoll(argv[4]), total = atoll(argv[5]);
    double seconds = atof(argv[6]);
    int direct = strchr(argv[7], 'd') != NULL, sync_each = strchr(argv[7], 's') != NULL;
    int global = strchr(argv[7], 'y') != NULL;
    if (region < block || block <= 0) return 64;
    int fd = open(argv[2], O_WRONLY | O_CREAT | (direct ? O_DIRECT : 0), 0600);
    if (fd < 0) {
        perror("open");
        return 1;
    }
    char *buf = aligned(block);
    long long written = 0, ops = 0, offset = 0;
    double start = now(), elapsed = 0;
    while ((total == 0 || written < total) && (seconds == 0 || elapsed < seconds)) {
        if (stop && access(stop, F_OK) == 0) break;
        if (offset + block > region) offset = 0;
        if (pwrite(fd, buf, block, offset) != block) {
            perror("pwrite");
            return 1;
        }
        if (sync_each && fsync(fd) != 0) {
            perror("fsync");
            return 1;
        }
        offset += block;
        written += block;
        ops++;
        elapsed = now() - start;
    }
    if (global) {
        sync();
    } else if (!sync_each && fsync(fd) != 0) {
        perror("fsync");
        return 1;
    }
    elapsed = now() - start;
    printf("bytes=%lld ops=%lld seconds=%.6f\n", written, ops, elapsed);
    return 0;
}

static int do_read(int argc, char **argv) {
    if (argc != 6) return 64;
    long long block = atoll(argv[3]), total = atoll(argv[4]);
    int direct = strchr(argv[5], 'd') != NULL;
    int fd = open(argv[2], O_RDONLY | (direct ? O_DIRECT : 0));
    if (fd < 0) {
        perror("open");
        return 1;
    }
    char *buf = aligned(block);
    long long done = 0, ops = 0;
    double start = now();
    while (done < total) {
        ssize_t got = pread(fd, buf, block, done);
        if (got <= 0) {
            perror("pread");
            return 1;
        }
        done += got;
        ops++;
    }
    printf("bytes=%lld ops=%lld seconds=%.6f\n", done, ops, now() - start);
    return 0;
}

static int do_fsync(int argc, char **argv) {
    if (argc != 5) return 64;
    int count = atoi(argv[3]);
    long gap = atol(argv[4]);
    int fd = open(argv[2], O_WRONLY | O_CREAT, 0600);
    if (fd < 0 || count <= 0) {
        perror("open");
        return 1;
    }
    char *buf = aligned(4096);
    long *lat = calloc(count, sizeof(long));
    for (int i = 0; i < count; i++) {
        if (pwrite(fd, buf, 4096, (off_t)(i % 256) * 4096) != 4096) {
            perror("pwrite");
            return 1;
        }
        double t = now();
        if (fsync(fd) != 0) {
            perror("fsync");
            return 1;
        }
        lat[i] = (long)((now() - t) * 1e6);
        if (gap > 0) usleep(gap);
    }
    printf("latencies_us\n");
    for (int i = 0; i < count; i++) printf("%ld\n", lat[i]);
    printf("count=%d\n", count);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "write") == 0) return do_write(argc, argv);
    if (argc >= 2 && strcmp(argv[1], "read") == 0) return do_read(argc, argv);
    if (argc >= 2 && strcmp(argv[1], "fsync") == 0) return do_fsync(argc, argv);
    fprintf(stderr, "usage: io-probe write|read|fsync ...\n");
    return 64;
}
