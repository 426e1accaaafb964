/* Opens pseudo-terminals through /dev/ptmx until N are open or the kernel refuses one, and
   says how many it got and why it stopped; built static so it runs in any guest.
   Usage: pty_tool N [hold]   (N = 0: until refused; hold: keep them open until killed) */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    long want = strtol(argv[1], NULL, 0);
    const char *ptmx = getenv("PTMX") ? getenv("PTMX") : "/dev/ptmx";
    long opened = 0;
    int err = 0;
    while (want == 0 || opened < want) {
        int fd = open(ptmx, O_RDWR | O_NOCTTY);
        if (fd < 0) { err = errno; break; }
        opened++;
    }
    printf("opened=%ld errno=%s\n", opened, err ? strerrorname_np(err) : "0");
    fflush(stdout);
    if (argc > 2 && strcmp(argv[2], "hold") == 0) {
        close(1);
        close(2);
        for (;;) pause();
    }
    return err && want ? 1 : 0;
}
