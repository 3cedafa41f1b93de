/* Prints what IP-, TCP- and UDP-level options read on a socket, one line
 * each, so a run on real sockets and a run under redirect can be compared
 * line by line:
 *
 *   sockopts server 4|6 tcp|udp PORT   bind on loopback:PORT (and listen):
 *                                      "bound ..." lines; then (tcp) accept one
 *                                      connection, "accepted ...", "inherited
 *                                      ..." and "set ..." lines, or
 *                                      (udp) answer one datagram
 *   sockopts client 4|6 tcp|udp PORT   connect there: "connected ..." lines,
 *                                      then settings: "set ..." lines (what
 *                                      setsockopt said, and what reads back);
 *                                      both ends read while the other waits
 *
 * A line is "ROLE LEVEL:NAME = HEX" or "ROLE LEVEL:NAME ! ERRNO". TCP_INFO is
 * shown as its state and length (the rest is counters). Prints "ready" once
 * the server listens. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <netinet/udp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

struct opt { int level, name, size; const char *label; };

static const struct opt ip4[] = {
    {IPPROTO_IP, IP_OPTIONS, 40, "IP_OPTIONS"}, {IPPROTO_IP, IP_TOS, 4, "IP_TOS"},
    {IPPROTO_IP, IP_TOS, 1, "IP_TOS(1 byte)"}, {IPPROTO_IP, IP_TTL, 4, "IP_TTL"},
    {IPPROTO_IP, IP_HDRINCL, 4, "IP_HDRINCL"}, {IPPROTO_IP, IP_RECVOPTS, 4, "IP_RECVOPTS"},
    {IPPROTO_IP, IP_PKTINFO, 4, "IP_PKTINFO"}, {IPPROTO_IP, IP_MTU_DISCOVER, 4, "IP_MTU_DISCOVER"},
    {IPPROTO_IP, IP_RECVERR, 4, "IP_RECVERR"}, {IPPROTO_IP, IP_MTU, 4, "IP_MTU"},
    {IPPROTO_IP, IP_FREEBIND, 4, "IP_FREEBIND"}, {IPPROTO_IP, IP_TRANSPARENT, 4, "IP_TRANSPARENT"},
    {IPPROTO_IP, IP_MULTICAST_TTL, 4, "IP_MULTICAST_TTL"}, {IPPROTO_IP, IP_MULTICAST_LOOP, 4, "IP_MULTICAST_LOOP"},
    {IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 4, "IP_BIND_ADDRESS_NO_PORT"},
    {IPPROTO_IP, 80, 16, "SO_ORIGINAL_DST"}, {IPPROTO_IP, 999, 4, "IP:999"}, {0, 0, 0, 0}};
static const struct opt ip6[] = {
    {IPPROTO_IPV6, IPV6_UNICAST_HOPS, 4, "IPV6_UNICAST_HOPS"}, {IPPROTO_IPV6, IPV6_MULTICAST_HOPS, 4, "IPV6_MULTICAST_HOPS"},
    {IPPROTO_IPV6, IPV6_MULTICAST_LOOP, 4, "IPV6_MULTICAST_LOOP"}, {IPPROTO_IPV6, IPV6_MTU_DISCOVER, 4, "IPV6_MTU_DISCOVER"},
    {IPPROTO_IPV6, IPV6_MTU, 4, "IPV6_MTU"}, {IPPROTO_IPV6, IPV6_RECVERR, 4, "IPV6_RECVERR"},
    {IPPROTO_IPV6, IPV6_V6ONLY, 4, "IPV6_V6ONLY"}, {IPPROTO_IPV6, IPV6_TCLASS, 4, "IPV6_TCLASS"},
    {IPPROTO_IPV6, 80, 28, "IP6T_SO_ORIGINAL_DST"}, {IPPROTO_IPV6, 999, 4, "IPV6:999"}, {0, 0, 0, 0}};
static const struct opt tcp[] = {
    {IPPROTO_TCP, TCP_NODELAY, 4, "TCP_NODELAY"}, {IPPROTO_TCP, TCP_MAXSEG, 4, "TCP_MAXSEG"},
    {IPPROTO_TCP, TCP_CORK, 4, "TCP_CORK"}, {IPPROTO_TCP, TCP_KEEPIDLE, 4, "TCP_KEEPIDLE"},
    {IPPROTO_TCP, TCP_KEEPINTVL, 4, "TCP_KEEPINTVL"}, {IPPROTO_TCP, TCP_KEEPCNT, 4, "TCP_KEEPCNT"},
    {IPPROTO_TCP, TCP_SYNCNT, 4, "TCP_SYNCNT"}, {IPPROTO_TCP, TCP_LINGER2, 4, "TCP_LINGER2"},
    {IPPROTO_TCP, TCP_DEFER_ACCEPT, 4, "TCP_DEFER_ACCEPT"}, {IPPROTO_TCP, TCP_CONGESTION, 16, "TCP_CONGESTION"},
    {IPPROTO_TCP, TCP_USER_TIMEOUT, 4, "TCP_USER_TIMEOUT"}, {IPPROTO_TCP, TCP_FASTOPEN, 4, "TCP_FASTOPEN"},
    {IPPROTO_TCP, TCP_NOTSENT_LOWAT, 4, "TCP_NOTSENT_LOWAT"}, {IPPROTO_TCP, 999, 4, "TCP:999"}, {0, 0, 0, 0}};
static const struct opt udp[] = {
    {IPPROTO_UDP, UDP_CORK, 4, "UDP_CORK"}, {IPPROTO_UDP, 999, 4, "UDP:999"}, {0, 0, 0, 0}};

static void show(const char *role, int s, const struct opt *o)
{
    for (; o->label; o++) {
        unsigned char buf[64];
        socklen_t len = o->size;
        memset(buf, 0, sizeof buf);
        if (getsockopt(s, o->level, o->name, buf, &len) < 0) {
            printf("%s %s ! %s\n", role, o->label, strerrorname_np(errno));
            continue;
        }
        printf("%s %s = ", role, o->label);
        for (socklen_t i = 0; i < len; i++)
            printf("%02x", buf[i]);
        printf(" (%u)\n", len);
    }
}

static void show_all(const char *role, int s, int family, int stream)
{
    show(role, s, family == AF_INET ? ip4 : ip6);
    show(role, s, stream ? tcp : udp);
    if (stream) {
        struct tcp_info info;
        socklen_t len = sizeof info;
        if (getsockopt(s, IPPROTO_TCP, TCP_INFO, &info, &len) < 0)
            printf("%s TCP_INFO ! %s\n", role, strerrorname_np(errno));
        else
            printf("%s TCP_INFO state %u (%u)\n", role, info.tcpi_state, len);
    }
    fflush(stdout);
}

/* Settings a program makes, good and bad: what setsockopt says, what reads back. */
static void settings(int s, int family, int stream)
{
    struct { int level, name, value; const char *label; } ints[] = {
        {IPPROTO_IP, IP_MTU, 1000, "IP_MTU=1000"},
        {IPPROTO_IP, IP_TOS, 0x10, "IP_TOS=0x10"}, {IPPROTO_IP, IP_TOS, 0x13, "IP_TOS=0x13"},
        {IPPROTO_IP, IP_TTL, 7, "IP_TTL=7"}, {IPPROTO_IP, IP_TTL, 1000, "IP_TTL=1000"},
        {IPPROTO_IPV6, IPV6_UNICAST_HOPS, 9, "IPV6_UNICAST_HOPS=9"}, {IPPROTO_IPV6, IPV6_TCLASS, 0x20, "IPV6_TCLASS=0x20"},
        {IPPROTO_TCP, TCP_NODELAY, 5, "TCP_NODELAY=5"}, {IPPROTO_TCP, TCP_KEEPIDLE, 30, "TCP_KEEPIDLE=30"},
        {IPPROTO_TCP, TCP_KEEPIDLE, 0, "TCP_KEEPIDLE=0"}, {IPPROTO_TCP, TCP_KEEPCNT, 300, "TCP_KEEPCNT=300"},
        {IPPROTO_TCP, TCP_USER_TIMEOUT, -5, "TCP_USER_TIMEOUT=-5"}, {IPPROTO_UDP, UDP_CORK, 1, "UDP_CORK=1"},
        {IPPROTO_TCP, 999, 1, "TCP:999=1"}, {999, 1, 1, "999:1=1"}, {0, 0, 0, 0}};
    char shown[16];
    for (int i = 0; ints[i].label; i++) {
        int level = ints[i].level;
        if ((level == IPPROTO_IP && family != AF_INET) || (level == IPPROTO_IPV6 && family != AF_INET6))
            continue;
        if ((level == IPPROTO_TCP && !stream) || (level == IPPROTO_UDP && stream))
            continue;
        int r = setsockopt(s, level, ints[i].name, &ints[i].value, sizeof(int)), set_errno = errno;
        int got = -1;
        socklen_t len = sizeof got;
        int g = getsockopt(s, level, ints[i].name, &got, &len);
        printf("set %s ! %s, reads %s\n", ints[i].label, r < 0 ? strerrorname_np(set_errno) : "0",
               g < 0 ? strerrorname_np(errno) : (snprintf(shown, sizeof shown, "%d", got), shown));
    }
    if (stream) {
        int r = setsockopt(s, IPPROTO_TCP, TCP_CONGESTION, "nosuch", 6);
        printf("set TCP_CONGESTION=nosuch ! %s\n", r < 0 ? strerrorname_np(errno) : "0");
    }
    fflush(stdout);
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: sockopts server|client 4|6 tcp|udp PORT\n");
        return 2;
    }
    int family = strcmp(argv[2], "6") == 0 ? AF_INET6 : AF_INET, stream = strcmp(argv[3], "tcp") == 0;
    int port = atoi(argv[4]);
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    socklen_t sl;
    if (family == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        a->sin_family = AF_INET, a->sin_port = htons(port), a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        sl = sizeof *a;
    } else {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        a->sin6_family = AF_INET6, a->sin6_port = htons(port), a->sin6_addr = in6addr_loopback;
        sl = sizeof *a;
    }
    int s = socket(family, stream ? SOCK_STREAM : SOCK_DGRAM, 0);
    if (strcmp(argv[1], "server") == 0) {
        int one = 1;
        setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(s, (struct sockaddr *)&ss, sl) < 0 || (stream && listen(s, 8) < 0)) {
            perror("bind/listen");
            return 1;
        }
        show_all("bound", s, family, stream);
        /* A connection inherits its listener's options as they were when
           it came, not those set later (see "inherited" below). */
        int hops_level = family == AF_INET ? IPPROTO_IP : IPPROTO_IPV6;
        int hops = family == AF_INET ? IP_TTL : IPV6_UNICAST_HOPS, before = 20, later = 30;
        if (stream)
            setsockopt(s, hops_level, hops, &before, sizeof before);
        printf("ready\n");
        fflush(stdout);
        if (stream) {
            struct sockaddr_storage peer;
            socklen_t pl = sizeof peer;
            /* With a connection waiting and an address: the notify
               backend's compiled accept (a blocking accept with nothing
               waiting is its Python handler's). */
            struct pollfd waiting = {.fd = s, .events = POLLIN};
            poll(&waiting, 1, -1);
            int c = accept(s, (struct sockaddr *)&peer, &pl);
            if (c < 0) {
                perror("accept");
                return 1;
            }
            show_all("accepted", c, family, stream);
            int got = -1;
            socklen_t len = sizeof got;
            setsockopt(s, hops_level, hops, &later, sizeof later);
            getsockopt(c, hops_level, hops, &got, &len);
            printf("inherited hops = %d\n", got);
            settings(c, family, stream);  /* (set on a connection the notify backend accepted in C) */
            char b[1];
            if (write(c, "k", 1) != 1)  /* the client reads its options now: both ends still established */
                return 1;
            while (read(c, b, 1) > 0)  /* until the client is done */
                ;
        } else {
            char b[64];
            struct sockaddr_storage from;
            socklen_t fl = sizeof from;
            ssize_t n = recvfrom(s, b, sizeof b, 0, (struct sockaddr *)&from, &fl);
            if (n < 0 || sendto(s, b, n, 0, (struct sockaddr *)&from, fl) < 0) {
                perror("recvfrom/sendto");
                return 1;
            }
        }
        return 0;
    }
    if (connect(s, (struct sockaddr *)&ss, sl) < 0) {
        perror("connect");
        return 1;
    }
    if (stream) {
        char b[1];
        if (read(s, b, 1) != 1) {  /* the server has read its options */
            perror("read");
            return 1;
        }
    } else {
        char b[8];
        if (send(s, "x", 1, 0) < 0 || recv(s, b, sizeof b, 0) < 0) {
            perror("send/recv");
            return 1;
        }
    }
    show_all("connected", s, family, stream);
    settings(s, family, stream);
    return 0;
}
