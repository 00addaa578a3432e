/*
 * hammer: a connect-and-wait-for-close flooder in C, for rates a Python client cannot reach.
 *
 * Keeps IN_FLIGHT non-blocking connections going from the given loopback sources: connect,
 * wait for the server to answer or close, read what it sent (an HTTP refusal or nothing), close,
 * connect again. Bounded by --duration seconds and --max connects. Prints a JSON report shaped
 * like bench/flood.py's (outcomes, elapsed, attempts, series). Built by bench/run.py with
 * `cc -O2 -o hammer hammer.c`.
 *
 *   hammer --port 8765 [--host 127.0.0.1] [--in-flight 256] [--sources 1] [--source-base 0]
 *          [--duration 10] [--max 2000000] [--interval 0.5]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

enum { OUT_EOF, OUT_RESET, OUT_HTTP_OTHER, OUT_CONNECT_ERR, OUT_TIMEOUT, N_OUT };
static const char *OUT_NAMES[N_OUT] = {"eof", "reset", "http:other", "connect:error", "timeout"};
#define MAX_STATUS 600

static long long outcomes[N_OUT];
static long long http_status[MAX_STATUS];
static long long connected_n, attempts_n;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

struct slot {
    int fd;
    int connected;
    double started;
};

static struct sockaddr_in dst;
static struct sockaddr_in *srcs;
static int n_srcs;
static int epfd;

static int open_one(struct slot *s, long long i) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&srcs[i % n_srcs], sizeof srcs[0]) < 0) {
        close(fd);
        return -1;
    }
    attempts_n++;
    s->fd = fd;
    s->connected = 0;
    s->started = now();
    int rc = connect(fd, (struct sockaddr *)&dst, sizeof dst);
    if (rc < 0 && errno != EINPROGRESS) {
        outcomes[OUT_CONNECT_ERR]++;
        close(fd);
        s->fd = -1;
        return -1;
    }
    struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN | EPOLLRDHUP, .data.ptr = s};
    epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
    return 0;
}

static void finish(struct slot *s, int outcome, int status) {
    if (status > 0 && status < MAX_STATUS)
        http_status[status]++;
    else
        outcomes[outcome]++;
    close(s->fd);  /* also removes it from the epoll set */
    s->fd = -1;
}

static void on_event(struct slot *s, unsigned events) {
    if (!s->connected) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) {
            finish(s, OUT_CONNECT_ERR, 0);
            return;
        }
        s->connected = 1;
        connected_n++;
        struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = s};
        epoll_ctl(epfd, EPOLL_CTL_MOD, s->fd, &ev);
        if (!(events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))) return;
    }
    char buf[512];
    ssize_t n = recv(s->fd, buf, sizeof buf - 1, 0);
    if (n > 0) {
        buf[n] = 0;
        int status = 0;
        if (n >= 12 && memcmp(buf, "HTTP/1.", 7) == 0) status = atoi(buf + 9);
        finish(s, OUT_HTTP_OTHER, status);
    } else if (n == 0) {
        finish(s, OUT_EOF, 0);
    } else if (errno == EAGAIN) {
        return;
    } else {
        finish(s, errno == ECONNRESET ? OUT_RESET : OUT_CONNECT_ERR, 0);
    }
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1";
    int port = 8765, in_flight = 256, sources = 1, base = 0;
    double duration = 10, interval = 0.5, timeout = 5;
    long long max = 2000000;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--host")) host = argv[i + 1];
        else if (!strcmp(argv[i], "--port")) port = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--in-flight")) in_flight = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--sources")) sources = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--source-base")) base = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--duration")) duration = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--max")) max = atoll(argv[i + 1]);
        else if (!strcmp(argv[i], "--interval")) interval = atof(argv[i + 1]);
        else { fprintf(stderr, "unknown option %s\n", argv[i]); return 2; }
    }
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    if (in_flight > (int)rl.rlim_cur - 16) in_flight = (int)rl.rlim_cur - 16;

    memset(&dst, 0, sizeof dst);
    dst.sin_family = AF_INET;
    dst.sin_port = htons(port);
    inet_pton(AF_INET, host, &dst.sin_addr);
    n_srcs = sources;
    srcs = calloc(sources, sizeof *srcs);
    for (int i = 0; i < sources; i++) {  /* the same numbering as bench/wire.py's source() */
        char addr[32];
        snprintf(addr, sizeof addr, "127.%d.%d.%d", base, i / 250, i % 250 + 2);
        srcs[i].sin_family = AF_INET;
        inet_pton(AF_INET, addr, &srcs[i].sin_addr);
    }
    epfd = epoll_create1(0);
    struct slot *slots = calloc(in_flight, sizeof *slots);
    struct epoll_event *events = calloc(in_flight, sizeof *events);
    double t0 = now(), end = t0 + duration, next_tick = t0 + interval;
    long long idx = 0;
    for (int i = 0; i < in_flight; i++) slots[i].fd = -1;

    char *series = malloc(1 << 20);
    size_t series_len = 0;
    series[0] = 0;
    int first = 1;
    double t;
    while ((t = now()) < end) {
        for (int i = 0; i < in_flight && attempts_n < max; i++)
            if (slots[i].fd < 0) open_one(&slots[i], idx++);
        int n = epoll_wait(epfd, events, in_flight, 10);
        for (int i = 0; i < n; i++) on_event(events[i].data.ptr, events[i].events);
        t = now();
        for (int i = 0; i < in_flight; i++)
            if (slots[i].fd >= 0 && t - slots[i].started > timeout) finish(&slots[i], OUT_TIMEOUT, 0);
        if (t >= next_tick) {
            long long closed = 0;
            for (int k = 0; k < N_OUT; k++) closed += outcomes[k];
            for (int k = 0; k < MAX_STATUS; k++) closed += http_status[k];
            int open = 0;
            for (int i = 0; i < in_flight; i++) open += slots[i].fd >= 0;
            if (series_len < (1 << 20) - 256)
                series_len += snprintf(series + series_len, (1 << 20) - series_len,
                                       "%s{\"t\": %.3f, \"open\": %d, \"upgraded\": 0, \"authed\": 0, "
                                       "\"attempts\": %lld, \"connected\": %lld, \"closed\": %lld}",
                                       first ? "" : ", ", t - t0, open, attempts_n, connected_n, closed);
            first = 0;
            next_tick += interval;
        }
        if (attempts_n >= max) {
            int open = 0;
            for (int i = 0; i < in_flight; i++) open += slots[i].fd >= 0;
            if (!open) break;
        }
    }
    double elapsed = now() - t0;
    printf("{\"tool\": \"hammer\", \"elapsed\": %.6f, \"attempts\": %lld, \"connected\": %lld, "
           "\"attempts_per_s\": %.3f, \"t0_monotonic\": %.6f, \"peak\": {\"open\": %d, \"upgraded\": 0, \"authed\": 0}, "
           "\"errors\": [], \"closed_after\": {}, \"outcomes\": {",
           elapsed, attempts_n, connected_n, attempts_n / elapsed, t0, in_flight);
    int comma = 0;
    for (int k = 0; k < N_OUT; k++)
        if (outcomes[k]) printf("%s\"%s\": %lld", comma++ ? ", " : "", OUT_NAMES[k], outcomes[k]);
    for (int k = 0; k < MAX_STATUS; k++)
        if (http_status[k]) printf("%s\"http:%d\": %lld", comma++ ? ", " : "", k, http_status[k]);
    printf("}, \"series\": [%s]}\n", series);
    return 0;
}
