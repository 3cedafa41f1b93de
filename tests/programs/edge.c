/* edge: system calls whose buffers run into an unmapped page, as a buggy or
 * hostile program may pass them. Prints "<call> <result or errno name>" for
 * each; run natively and under redirect, the lines must be the same.
 * usage: edge PORT */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

static void report(const char *what, long res)
{
    if (res < 0)
        printf("%s %s\n", what, errno == EFAULT ? "EFAULT" : errno == EINVAL ? "EINVAL" : strerror(errno));
    else
        printf("%s ok\n", what);
    fflush(stdout);
}

int main(int argc, char **argv)
{
    if (argc != 2)
        return 2;
    long page = sysconf(_SC_PAGESIZE);
    char *area = mmap(NULL, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (area == MAP_FAILED || mprotect(area + page, page, PROT_NONE) != 0)
        return 3;
    char *edge = area + page;
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);

    /* bind: the address's first 8 bytes mapped, the rest not */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    memcpy(edge - 8, &sin, 8);
    report("bind-cut", bind(fd, (struct sockaddr *)(edge - 8), sizeof sin));
    /* connect, likewise */
    report("connect-cut", connect(fd, (struct sockaddr *)(edge - 8), sizeof sin));
    /* setsockopt: an int value with 2 of its 4 bytes mapped */
    memset(edge - 2, 1, 2);
    report("setsockopt-cut", setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, edge - 2, sizeof(int)));
    /* sendto on UDP: an iovec array whose second entry is cut by the edge */
    int udp = socket(AF_INET, SOCK_DGRAM, 0);
    struct iovec *iov = (struct iovec *)(edge - sizeof(struct iovec) - 8);
    iov[0].iov_base = "x";
    iov[0].iov_len = 1;
    struct msghdr msg = {.msg_name = &sin, .msg_namelen = sizeof sin, .msg_iov = iov, .msg_iovlen = 2};
    report("sendmsg-iov-cut", sendmsg(udp, &msg, 0));
    /* and a whole bind, to show the port converts at all */
    memcpy(edge - sizeof sin, &sin, sizeof sin);
    report("bind-whole", bind(fd, (struct sockaddr *)(edge - sizeof sin), sizeof sin));
    return 0;
}
