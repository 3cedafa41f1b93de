/* Tries to bind TCP sockets around a 64-bit seccomp filter: through the i386
 * ABI (int 0x80: socketcall and the direct calls) and the x32 ABI. Prints each
 * result as the raw kernel return value (negative errno). */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Static, so their addresses fit in 32 bits (the binary is built -no-pie). */
static struct sockaddr_in addr;
static unsigned int args[3];

static long int80(long nr, long a, long b, long c)
{
    long ret;
    __asm__ volatile("int $0x80" : "=a"(ret) : "a"(nr), "b"(a), "c"(b), "d"(c) : "memory");
    return ret;
}

static void set_port(int port)
{
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: bypass-probe PORT (uses PORT, PORT+1, PORT+2)\n");
        return 2;
    }
    int port = atoi(argv[1]);

    args[0] = AF_INET; args[1] = SOCK_STREAM; args[2] = 0;
    long fd = int80(102, 1 /* SYS_SOCKET */, (long)args, 0);
    set_port(port);
    args[0] = fd; args[1] = (unsigned int)(unsigned long)&addr; args[2] = sizeof addr;
    printf("int80-socketcall-bind %ld\n", int80(102, 2 /* SYS_BIND */, (long)args, 0));

    int fd2 = socket(AF_INET, SOCK_STREAM, 0);
    set_port(port + 1);
    printf("int80-bind %ld\n", int80(361 /* i386 bind */, fd2, (long)&addr, sizeof addr));

    int fd3 = socket(AF_INET, SOCK_STREAM, 0);
    set_port(port + 2);
    long r = syscall(0x40000000 | 49 /* x32 bind */, fd3, &addr, sizeof addr);
    printf("x32-bind %ld\n", r < 0 ? -(long)errno : r);

    /* listen on a socket never bound (the kernel picks a port), directly and
     * through socketcall after a bind to port 0: real listeners either way. */
    int fd4 = socket(AF_INET, SOCK_STREAM, 0);
    printf("int80-listen %ld\n", int80(363 /* i386 listen */, fd4, 8, 0));
    int fd5 = socket(AF_INET, SOCK_STREAM, 0);
    set_port(0);
    bind(fd5, (struct sockaddr *)&addr, sizeof addr);
    args[0] = fd5; args[1] = 8;
    printf("int80-socketcall-listen %ld\n", int80(102, 4 /* SYS_LISTEN */, (long)args, 0));
    int fd6 = socket(AF_INET, SOCK_STREAM, 0);
    args[0] = fd6; args[1] = 0; args[2] = 0;
    printf("int80-socketcall-getsockname %ld\n", int80(102, 6 /* SYS_GETSOCKNAME */, (long)args, 0));

    /* What would take the program out of sight, through int 0x80: its own
     * seccomp listener (no filter given: EFAULT natively) and an untraced
     * child (an invalid flag set: EINVAL natively, nothing is created). */
    printf("int80-seccomp-listener %ld\n", int80(354, 1 /* SET_MODE_FILTER */, 8 /* NEW_LISTENER */, 0));
    printf("int80-clone-untraced %ld\n", int80(120, 0x00800000 /* CLONE_UNTRACED */ | 0x00010000 /* CLONE_THREAD */, 0, 0));
    return 0;
}
