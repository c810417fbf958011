/*
 * tether's in-namespace readiness probe: one attempt at a sidecar's port on 127.0.0.1, from a
 * helper container that shares the sidecar's network namespace. It is copied into the helper,
 * so it needs nothing from the image: no libc, no loader, only system calls.
 *
 *   probe tcp PORT [TRIES EVERY_MS]         exit 0 when a TCP connection is accepted
 *   probe http PORT PATH [TRIES EVERY_MS]   exit 0 when GET PATH answers 200 to 399
 *
 * Up to TRIES attempts (1 by default), EVERY_MS apart. Otherwise it exits 1 (nothing accepts
 * the connection) or 2 (a refusing HTTP status).
 */

typedef unsigned long u64;
typedef long i64;

#if defined(__x86_64__)
enum { SYS_read = 0, SYS_write = 1, SYS_close = 3, SYS_nanosleep = 35, SYS_socket = 41,
       SYS_connect = 42, SYS_setsockopt = 54, SYS_exit_group = 231 };
static i64 sys(i64 n, i64 a, i64 b, i64 c, i64 d, i64 e) {
    i64 ret;
    register i64 r10 __asm__("r10") = d;
    register i64 r8 __asm__("r8") = e;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8)
                     : "rcx", "r11", "memory");
    return ret;
}
__asm__(".global _start\n"
        "_start:\n"
        "  xor %rbp, %rbp\n"
        "  mov %rsp, %rdi\n"
        "  and $-16, %rsp\n"
        "  call start\n"
        "  hlt\n");
#elif defined(__aarch64__)
enum { SYS_read = 63, SYS_write = 64, SYS_close = 57, SYS_nanosleep = 101, SYS_socket = 198,
       SYS_connect = 203, SYS_setsockopt = 208, SYS_exit_group = 94 };
static i64 sys(i64 n, i64 a, i64 b, i64 c, i64 d, i64 e) {
    register i64 x8 __asm__("x8") = n;
    register i64 x0 __asm__("x0") = a;
    register i64 x1 __asm__("x1") = b;
    register i64 x2 __asm__("x2") = c;
    register i64 x3 __asm__("x3") = d;
    register i64 x4 __asm__("x4") = e;
    __asm__ volatile("svc 0"
                     : "+r"(x0)
                     : "r"(x8), "r"(x1), "r"(x2), "r"(x3), "r"(x4)
                     : "memory");
    return x0;
}
__asm__(".global _start\n"
        "_start:\n"
        "  mov x0, sp\n"
        "  bl start\n");
#else
#error "the probe is built for x86_64 and aarch64"
#endif

enum { AF_INET = 2, SOCK_STREAM = 1, SOL_SOCKET = 1, SO_RCVTIMEO = 20, SO_SNDTIMEO = 21 };

struct sockaddr_in {
    unsigned short family;
    unsigned short port; /* network order */
    unsigned int addr;   /* network order */
    unsigned char zero[8];
};

struct timeval {
    i64 sec;
    i64 usec;
};

struct timespec {
    i64 sec;
    i64 nsec;
};

static __attribute__((noreturn)) void quit(int code) {
    for (;;) sys(SYS_exit_group, code, 0, 0, 0, 0);
}

static u64 length(const char *s) {
    u64 n = 0;
    while (s[n]) n++;
    return n;
}

static int same(const char *a, const char *b) {
    while (*a && *a == *b) a++, b++;
    return *a == *b;
}

/* A decimal number from 1 to 65535, else 0. */
static unsigned port_of(const char *s) {
    unsigned v = 0;
    if (!*s) return 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9') return 0;
        v = v * 10 + (unsigned)(*s - '0');
        if (v > 65535) return 0;
    }
    return v;
}

static int send_all(int fd, const char *p, u64 n) {
    while (n > 0) {
        i64 w = sys(SYS_write, fd, (i64)p, (i64)n, 0, 0);
        if (w <= 0) return -1;
        p += w;
        n -= (u64)w;
    }
    return 0;
}

static void usage(void) {
    static const char text[] =
        "usage: probe tcp PORT [TRIES EVERY_MS] | probe http PORT PATH [TRIES EVERY_MS]\n";
    sys(SYS_write, 2, (i64)text, sizeof text - 1, 0, 0);
    quit(64);
}

/* One attempt: 0 ready, 1 nothing accepts the connection, 2 a refusing HTTP status. */
static int attempt(unsigned port, const char *path) {
    int fd = (int)sys(SYS_socket, AF_INET, SOCK_STREAM, 0, 0, 0);
    if (fd < 0) return 1;
    struct timeval limit = {2, 0};
    sys(SYS_setsockopt, fd, SOL_SOCKET, SO_RCVTIMEO, (i64)&limit, sizeof limit);
    sys(SYS_setsockopt, fd, SOL_SOCKET, SO_SNDTIMEO, (i64)&limit, sizeof limit);
    struct sockaddr_in to = {AF_INET, (unsigned short)((port >> 8) | ((port & 0xff) << 8)),
                             0x0100007f, {0}};
    int code = 1;
    if (sys(SYS_connect, fd, (i64)&to, sizeof to, 0, 0) != 0) goto done;
    if (!path) {
        code = 0;
        goto done;
    }
    static const char get[] = "GET ";
    static const char rest[] = " HTTP/1.0\r\nHost: localhost\r\nUser-Agent: tether-probe\r\n\r\n";
    if (send_all(fd, get, sizeof get - 1) || send_all(fd, path, length(path)) ||
        send_all(fd, rest, sizeof rest - 1))
        goto done;
    /* "HTTP/1.x NNN": the status is bytes 9 to 11. */
    char head[12];
    u64 got = 0;
    while (got < sizeof head) {
        i64 r = sys(SYS_read, fd, (i64)(head + got), (i64)(sizeof head - got), 0, 0);
        if (r <= 0) goto done;
        got += (u64)r;
    }
    static const char version[] = "HTTP/1.";
    for (u64 i = 0; i < sizeof version - 1; i++)
        if (head[i] != version[i]) goto done;
    for (int i = 9; i < 12; i++)
        if (head[i] < '0' || head[i] > '9') goto done;
    int status = (head[9] - '0') * 100 + (head[10] - '0') * 10 + (head[11] - '0');
    code = status >= 200 && status < 400 ? 0 : 2;
done:
    sys(SYS_close, fd, 0, 0, 0, 0);
    return code;
}

/* A decimal number, else -1. */
static i64 number(const char *s) {
    i64 v = 0;
    if (!*s) return -1;
    for (; *s; s++) {
        if (*s < '0' || *s > '9' || v > 100000000) return -1;
        v = v * 10 + (*s - '0');
    }
    return v;
}

/*   probe tcp PORT [TRIES EVERY_MS]
 *   probe http PORT PATH [TRIES EVERY_MS]
 * TRIES attempts (1 by default), EVERY_MS apart, until one succeeds. */
__attribute__((used)) void start(i64 *stack) {
    i64 argc = stack[0];
    char **argv = (char **)(stack + 1);
    if (argc < 3) usage();
    int http = same(argv[1], "http");
    if (!http && !same(argv[1], "tcp")) usage();
    if (http && (argc < 4 || argv[3][0] != '/')) usage();
    unsigned port = port_of(argv[2]);
    if (!port) usage();
    int first = http ? 4 : 3;
    i64 tries = 1, every = 0;
    if (argc == first + 2) {
        tries = number(argv[first]);
        every = number(argv[first + 1]);
        if (tries < 1 || every < 0) usage();
    } else if (argc != first) {
        usage();
    }
    int code = 1;
    for (i64 n = 0; n < tries; n++) {
        if (n > 0) {
            struct timespec pause = {every / 1000, (every % 1000) * 1000000};
            sys(SYS_nanosleep, (i64)&pause, 0, 0, 0, 0);
        }
        code = attempt(port, http ? argv[3] : 0);
        if (code == 0) break;
    }
    quit(code);
}
