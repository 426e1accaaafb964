/* A raw-frame tool the firewall tests copy into a guest and run there as its root, to do what
 * busybox cannot: send hand-made Ethernet frames and watch everything that reaches eth0.
 *
 *   frame_tool send IFACE HEXFRAME...     send each frame once, in order
 *   frame_tool sniff IFACE SECONDS STOPHEX [READYFILE]
 *        print every frame received on IFACE as one hex line until one contains STOPHEX
 *        (printed too; exit 0) or SECONDS pass (exit 3); creates READYFILE once listening.
 *
 * Built static (the busybox guest has no C library): gcc -static -O2 -o frame_tool frame_tool.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int open_socket(const char *iface, struct sockaddr_ll *where) {
    int fd = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
    if (fd < 0) { perror("socket"); exit(2); }
    memset(where, 0, sizeof(*where));
    where->sll_family = AF_PACKET;
    where->sll_protocol = htons(ETH_P_ALL);
    where->sll_ifindex = (int)if_nametoindex(iface);
    if (where->sll_ifindex == 0) { perror("if_nametoindex"); exit(2); }
    if (bind(fd, (struct sockaddr *)where, sizeof(*where)) < 0) { perror("bind"); exit(2); }
    return fd;
}

static size_t unhex(const char *text, unsigned char *out, size_t room) {
    size_t n = strlen(text) / 2;
    if (n > room || strlen(text) % 2) { fprintf(stderr, "bad hex\n"); exit(2); }
    for (size_t i = 0; i < n; i++) {
        unsigned int byte;
        if (sscanf(text + 2 * i, "%2x", &byte) != 1) { fprintf(stderr, "bad hex\n"); exit(2); }
        out[i] = (unsigned char)byte;
    }
    return n;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    struct sockaddr_ll where;
    unsigned char frame[65536];
    if (argc >= 4 && strcmp(argv[1], "send") == 0) {
        int fd = open_socket(argv[2], &where);
        for (int i = 3; i < argc; i++) {
            size_t n = unhex(argv[i], frame, sizeof(frame));
            if (send(fd, frame, n, 0) != (ssize_t)n) { perror("send"); return 1; }
        }
        return 0;
    }
    if ((argc == 5 || argc == 6) && strcmp(argv[1], "sniff") == 0) {
        int fd = open_socket(argv[2], &where);
        struct packet_mreq promisc = {.mr_ifindex = where.sll_ifindex, .mr_type = PACKET_MR_PROMISC};
        if (setsockopt(fd, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &promisc, sizeof(promisc)) < 0) {
            perror("promiscuous mode");
            return 2;
        }
        unsigned char stop[2048];
        size_t stop_len = unhex(argv[4], stop, sizeof(stop));
        if (argc == 6) {
            FILE *ready = fopen(argv[5], "w");
            if (!ready) { perror("ready file"); return 2; }
            fclose(ready);
        }
        double deadline = now() + atof(argv[3]);
        while (now() < deadline) {
            struct pollfd p = {.fd = fd, .events = POLLIN};
            if (poll(&p, 1, 50) <= 0) continue;
            struct sockaddr_ll from;
            socklen_t from_len = sizeof(from);
            ssize_t n = recvfrom(fd, frame, sizeof(frame), 0, (struct sockaddr *)&from, &from_len);
            if (n <= 0 || from.sll_pkttype == PACKET_OUTGOING) continue;
            for (ssize_t i = 0; i < n; i++) printf("%02x", frame[i]);
            printf("\n");
            fflush(stdout);
            if (stop_len && n >= (ssize_t)stop_len && memmem(frame, (size_t)n, stop, stop_len)) return 0;
        }
        return 3;
    }
    fprintf(stderr, "usage: frame_tool send IFACE HEX... | sniff IFACE SECONDS STOPHEX [READYFILE]\n");
    return 2;
}
