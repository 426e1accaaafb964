/* A raw-frame tool the firewall tests copy into a guest and run there as its root, to do what
 * busybox cannot: send hand-made Ethernet frames and watch everything that reaches eth0.
 *
 *   frame_tool send IFACE HEXFRAME...     send each frame once, in order
 *   frame_tool sniff IFACE SECONDS STOPHEX [READYFILE]
 *        print every frame received on IFACE as one hex line until one contains STOPHEX
 *        (printed too; exit 0) or SECONDS pass (exit 3); creates READYFILE once listening.
 *   frame_tool flood IFACE COUNT DSTMAC
 *        send COUNT frames to DSTMAC (EtherType 0x88b5), each from another random source MAC
 *   frame_tool spray ADDRESS COUNT
 *        one UDP datagram (port 9) to each of COUNT addresses from ADDRESS on (IPv4: the next
 *        ones; IPv6: ADDRESS's /64 with random interface identifiers); prints "sent N refused M"
 *   frame_tool neigh IFACE ADDRESS COUNT
 *        add COUNT permanent neighbour entries on IFACE (RTM_NEWNEIGH) for the IPv4 addresses
 *        from ADDRESS on; prints "added N" and the first error
 *
 * Built static (the busybox guest has no C library): gcc -static -O2 -o frame_tool frame_tool.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/neighbour.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <netinet/in.h>
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

static void random_bytes(unsigned char *out, size_t n) {
    static int fd = -1;
    if (fd < 0) fd = open("/dev/urandom", O_RDONLY);
    if (fd < 0 || read(fd, out, n) != (ssize_t)n) { perror("urandom"); exit(2); }
}

static int flood(const char *iface, long count, const char *dst) {
    struct sockaddr_ll where;
    unsigned char frame[60] = {0};
    int fd = open_socket(iface, &where);
    if (unhex(dst, frame, 6) != 6) return 2;
    frame[12] = 0x88; frame[13] = 0xb5;
    long sent = 0;
    for (long i = 0; i < count; i++) {
        random_bytes(frame + 6, 6);
        frame[6] = (frame[6] & 0xfc) | 0x02; /* unicast, locally administered */
        if (send(fd, frame, sizeof(frame), 0) == (ssize_t)sizeof(frame)) sent++;
    }
    printf("sent %ld\n", sent);
    return 0;
}

static int spray(const char *address, long count) {
    struct sockaddr_storage to;
    socklen_t to_len;
    int family;
    memset(&to, 0, sizeof(to));
    struct sockaddr_in *v4 = (struct sockaddr_in *)&to;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&to;
    if (inet_pton(AF_INET, address, &v4->sin_addr) == 1) {
        family = AF_INET; v4->sin_family = AF_INET; v4->sin_port = htons(9); to_len = sizeof(*v4);
    } else if (inet_pton(AF_INET6, address, &v6->sin6_addr) == 1) {
        family = AF_INET6; v6->sin6_family = AF_INET6; v6->sin6_port = htons(9); to_len = sizeof(*v6);
    } else {
        fprintf(stderr, "bad address\n");
        return 2;
    }
    uint32_t first = ntohl(v4->sin_addr.s_addr);
    long sent = 0, refused = 0;
    int fd = -1, used = 0;
    for (long i = 0; i < count; i++) {
        /* Each datagram waits in its neighbour entry's queue, charged to its socket: a fresh
         * socket every 100 keeps the send buffer from running out. */
        if (fd < 0 || used == 100) {
            if (fd >= 0) close(fd);
            fd = socket(family, SOCK_DGRAM | SOCK_NONBLOCK, 0);
            if (fd < 0) { perror("socket"); return 2; }
            used = 0;
        }
        if (family == AF_INET) v4->sin_addr.s_addr = htonl(first + (uint32_t)i);
        else random_bytes(v6->sin6_addr.s6_addr + 8, 8);
        used++;
        if (sendto(fd, "x", 1, 0, (struct sockaddr *)&to, to_len) == 1) sent++;
        else if (errno == EPERM) refused++;
    }
    printf("sent %ld refused %ld\n", sent, refused);
    return 0;
}

static int neigh(const char *iface, const char *address, long count) {
    struct in_addr first;
    int index = (int)if_nametoindex(iface);
    if (!index || inet_pton(AF_INET, address, &first) != 1) { fprintf(stderr, "bad iface or address\n"); return 2; }
    int fd = socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE);
    if (fd < 0) { perror("netlink"); return 2; }
    long added = 0;
    int first_error = 0;
    for (long i = 0; i < count; i++) {
        struct {
            struct nlmsghdr h;
            struct ndmsg nd;
            struct rtattr dst_attr; uint32_t dst;
            struct rtattr ll_attr; unsigned char ll[6]; unsigned char pad[2];
        } req;
        memset(&req, 0, sizeof(req));
        req.h.nlmsg_len = sizeof(req);
        req.h.nlmsg_type = RTM_NEWNEIGH;
        req.h.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
        req.h.nlmsg_seq = (uint32_t)i + 1;
        req.nd.ndm_family = AF_INET;
        req.nd.ndm_ifindex = index;
        req.nd.ndm_state = NUD_PERMANENT;
        req.dst_attr.rta_len = RTA_LENGTH(4); req.dst_attr.rta_type = NDA_DST;
        req.dst = htonl(ntohl(first.s_addr) + (uint32_t)i);
        req.ll_attr.rta_len = RTA_LENGTH(6); req.ll_attr.rta_type = NDA_LLADDR;
        unsigned char ll[6] = {0x02, 0, 0, 0, 0, 1};
        memcpy(req.ll, ll, 6);
        if (send(fd, &req, req.h.nlmsg_len, 0) < 0) { perror("send"); return 2; }
        char answer[4096];
        ssize_t n = recv(fd, answer, sizeof(answer), 0);
        if (n < (ssize_t)(sizeof(struct nlmsghdr) + sizeof(struct nlmsgerr))) { perror("recv"); return 2; }
        struct nlmsgerr *err = NLMSG_DATA((struct nlmsghdr *)answer);
        if (err->error == 0) added++;
        else if (!first_error) first_error = -err->error;
    }
    printf("added %ld error %s\n", added, first_error ? strerror(first_error) : "none");
    return 0;
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
    if (argc == 5 && strcmp(argv[1], "flood") == 0) return flood(argv[2], atol(argv[3]), argv[4]);
    if (argc == 4 && strcmp(argv[1], "spray") == 0) return spray(argv[2], atol(argv[3]));
    if (argc == 5 && strcmp(argv[1], "neigh") == 0) return neigh(argv[2], argv[3], atol(argv[4]));
    fprintf(stderr, "usage: frame_tool send IFACE HEX... | sniff IFACE SECONDS STOPHEX [READYFILE] | "
            "flood IFACE COUNT DSTMAC | spray ADDRESS COUNT | neigh IFACE ADDRESS COUNT\n");
    return 2;
}
