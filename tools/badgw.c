/* A misbehaving etcd gateway for the gateway specs: it speaks just enough
 * HTTP/1.1 to answer the client's POSTs, and answers them badly, the way a
 * broken or hostile server can.
 * usage: badgw LISTEN_PORT SCENARIO
 * It listens on 127.0.0.1:LISTEN_PORT (0: a free port), prints "PORT\n"
 * once listening, and answers every request per SCENARIO:
 *   silent       reads requests, never answers
 *   endless      200, then an endless line of "x" (no newline), as fast as
 *                the socket takes it
 *   truncated    200 with a Content-Length matching a JSON body cut in the
 *                middle, then closes (a watch: a cut line, then closes)
 *   wrongtypes   valid JSON with wrong types (a string for a list, a list
 *                for a number, ...)
 *   huge         200 with a 64 MiB body of valid-looking JSON (a watch: one
 *                64 MiB line), generated as it is sent
 *   int64        numbers at the edges of int64, and garbage that looks like
 *                numbers, in revisions, IDs, TTLs: one value after the other
 *                per request (each path has its own turn)
 *   error500     HTTP 500 with etcd's "no leader" error, for every request
 *   watchcancel  plausible answers to lease requests and ranges; every watch
 *                is created, then canceled with a reason, then closed; a txn
 *                gets no answer (only the watch's reason can end a lock)
 * Watch answers are streams: no Content-Length, "Connection: close", one
 * JSON object a line; a stream that is not closed stays open, silent.
 * Commands, one a line, on stdin:
 *   stats        print "conns=N requests=N" (connections accepted and
 *                requests read so far)
 *   pin N        int64: use value N (0 ...) for every answer; -1 rotates
 * EOF on stdin ends it. Single-threaded, poll()-based, libc only.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAXCONN  512
#define HEADMAX  65536              /* a longer request head: hang up */
#define HUGE     (64L << 20)        /* the huge scenario's body */
#define LOW      (256 * 1024)       /* generate more below this much output */

enum { SILENT, ENDLESS, TRUNCATED, WRONGTYPES, HUGEBODY, INT64, ERROR500, WATCHCANCEL };
static const char *const scenarios[] = {
    "silent", "endless", "truncated", "wrongtypes", "huge", "int64", "error500",
    "watchcancel", NULL
};

enum { P_RANGE, P_TXN, P_GRANT, P_KEEPALIVE, P_WATCH, P_OTHER, NPATHS };

enum { G_NONE, G_ENDLESS, G_HUGE };

struct buf { char *p; size_t n, cap; };

struct conn {
    int fd, slot;               /* its pollfd slot (-1: none) */
    struct buf in, out;
    int closing;                /* hang up once out (and the generator) is done */
    int streaming;              /* answered with a stream: later requests get nothing */
    int gen;                    /* G_*: output generated as the socket takes it */
    const char *g_item, *g_tail;
    long g_items, g_pad;        /* items and padding still to come */
    int g_first;
};

static struct conn *conns[MAXCONN];
static int nconns, lfd, scenario, pin = -1;
static long accepted, requests, turns[NPATHS];

/* The int64 scenario's values: the edges of int64, one past them, and
 * strings a lax parser takes for numbers. */
static const char *const edges[] = {
    "9223372036854775807", "-9223372036854775808", "9223372036854775808",
    "1e3", " 5", "5 ", ""
};
#define NEDGES ((int)(sizeof edges / sizeof edges[0]))

/* One small key-value (key /locker/x/1, value "v"). */
#define KV "{\"key\":\"L2xvY2tlci94LzE=\",\"create_revision\":\"2\",\"mod_revision\":\"2\"," \
           "\"version\":\"1\",\"value\":\"dg==\",\"lease\":\"7587\"}"

static void buf_add(struct buf *b, const char *p, size_t n)
{
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2;
        if (!(b->p = realloc(b->p, b->cap))) { perror("badgw"); exit(1); }
    }
    memcpy(b->p + b->n, p, n);
    b->n += n;
}

static void buf_puts(struct buf *b, const char *s)
{
    buf_add(b, s, strlen(s));
}

static void buf_printf(struct buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void buf_printf(struct buf *b, const char *fmt, ...)
{
    char tmp[4096];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    buf_add(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

static void consume(struct buf *b, size_t n)
{
    memmove(b->p, b->p + n, b->n - n);
    b->n -= n;
}

static void nonblock(int fd)
{
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

/* ---- answers ---- */

/* A complete answer with a Content-Length; keep-alive unless closing. */
static void answer(struct conn *c, int status, const char *body, int close_after)
{
    buf_printf(&c->out, "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                        "Content-Length: %zu\r\n%s\r\n",
               status, status == 200 ? "OK" : "Internal Server Error", strlen(body),
               close_after ? "Connection: close\r\n" : "");
    buf_puts(&c->out, body);
    if (close_after) c->closing = 1;
}

/* The head of an answer whose body ends when the connection does. */
static void stream_head(struct conn *c)
{
    buf_puts(&c->out, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                      "Connection: close\r\n\r\n");
    c->streaming = 1;
}

/* Starts the huge body: head, then items (comma-separated), padding
 * (spaces) and tail, HUGE bytes in all; with_length: a Content-Length. */
static void huge(struct conn *c, const char *head, const char *item, const char *tail,
                 int with_length)
{
    long h = (long)strlen(head), t = (long)strlen(tail), i = (long)strlen(item) + 1;
    if (with_length)
        buf_printf(&c->out, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                            "Content-Length: %ld\r\n\r\n", HUGE);
    else
        stream_head(c);
    buf_puts(&c->out, head);
    c->gen = G_HUGE;
    c->g_item = item;
    c->g_tail = tail;
    c->g_items = (HUGE - h - t + 1) / i;
    c->g_pad = HUGE - h - t - c->g_items * i + 1;
    c->g_first = 1;
}

/* Generates output while little of it waits. */
static void generate(struct conn *c)
{
    static char xs[65536], spaces[65536];
    if (!xs[0]) { memset(xs, 'x', sizeof xs); memset(spaces, ' ', sizeof spaces); }
    while (c->gen != G_NONE && c->out.n < LOW) {
        if (c->gen == G_ENDLESS) {
            buf_add(&c->out, xs, sizeof xs);
        } else if (c->g_items > 0) {
            for (int k = 0; k < 512 && c->g_items > 0; k++, c->g_items--) {
                if (!c->g_first) buf_add(&c->out, ",", 1);
                c->g_first = 0;
                buf_puts(&c->out, c->g_item);
            }
        } else if (c->g_pad > 0) {
            size_t k = c->g_pad < (long)sizeof spaces ? (size_t)c->g_pad : sizeof spaces;
            buf_add(&c->out, spaces, k);
            c->g_pad -= (long)k;
        } else {
            buf_puts(&c->out, c->g_tail);
            c->gen = G_NONE;
        }
    }
}

static int path_kind(const char *path)
{
    if (!strcmp(path, "/v3/kv/range")) return P_RANGE;
    if (!strcmp(path, "/v3/kv/txn")) return P_TXN;
    if (!strcmp(path, "/v3/lease/grant")) return P_GRANT;
    if (!strcmp(path, "/v3/lease/keepalive")) return P_KEEPALIVE;
    if (!strcmp(path, "/v3/watch")) return P_WATCH;
    return P_OTHER;
}

static void answer_int64(struct conn *c, int kind)
{
    const char *v = edges[pin >= 0 && pin < NEDGES ? pin : turns[kind]++ % NEDGES];
    char kv[512], body[2048];
    snprintf(kv, sizeof kv, "{\"key\":\"L2xvY2tlci94LzE=\",\"create_revision\":\"%s\","
             "\"mod_revision\":\"%s\",\"version\":\"1\",\"value\":\"dg==\",\"lease\":\"%s\"}",
             v, v, v);
    switch (kind) {
    case P_RANGE:
        snprintf(body, sizeof body, "{\"header\":{\"revision\":\"%s\"},\"kvs\":[%s],"
                 "\"count\":\"1\"}", v, kv);
        break;
    case P_TXN:
        snprintf(body, sizeof body, "{\"header\":{\"revision\":\"%s\"},\"succeeded\":true,"
                 "\"responses\":[{\"response_put\":{\"header\":{\"revision\":\"%s\"}}},"
                 "{\"response_range\":{\"header\":{\"revision\":\"%s\"},\"kvs\":[%s],"
                 "\"count\":\"1\"}}]}", v, v, v, kv);
        break;
    case P_GRANT:
        snprintf(body, sizeof body, "{\"header\":{\"revision\":\"%s\"},\"ID\":\"%s\","
                 "\"TTL\":\"%s\"}", v, v, v);
        break;
    case P_KEEPALIVE:
        snprintf(body, sizeof body, "{\"result\":{\"header\":{\"revision\":\"%s\"},"
                 "\"ID\":\"%s\",\"TTL\":\"%s\"}}", v, v, v);
        break;
    case P_WATCH:
        stream_head(c);
        buf_printf(&c->out, "{\"result\":{\"header\":{\"revision\":\"%s\"},\"created\":true}}\n"
                   "{\"result\":{\"header\":{\"revision\":\"%s\"},\"events\":[{\"type\":\"PUT\","
                   "\"kv\":%s}]}}\n", v, v, kv);
        return;
    default:
        snprintf(body, sizeof body, "{\"header\":{\"revision\":\"%s\"}}", v);
    }
    answer(c, 200, body, 0);
}

static void answer_huge(struct conn *c, int kind)
{
    switch (kind) {
    case P_WATCH:
        huge(c, "{\"result\":{\"header\":{\"revision\":\"1\"},\"created\":true,\"events\":[",
             "{\"type\":\"PUT\",\"kv\":" KV "}", "]}}\n", 0);
        break;
    case P_TXN:
        huge(c, "{\"header\":{\"revision\":\"1\"},\"succeeded\":false,\"responses\":["
                "{\"response_range\":{\"header\":{\"revision\":\"1\"},\"kvs\":[",
             KV, "]}}]}", 1);
        break;
    case P_GRANT:
        huge(c, "{\"header\":{\"revision\":\"1\"},\"ID\":\"7587\",\"TTL\":\"10\",\"kvs\":[",
             KV, "]}", 1);
        break;
    case P_KEEPALIVE:
        huge(c, "{\"result\":{\"header\":{\"revision\":\"1\"},\"ID\":\"7587\",\"TTL\":\"10\","
                "\"kvs\":[", KV, "]}}", 1);
        break;
    default:
        huge(c, "{\"header\":{\"revision\":\"1\"},\"kvs\":[", KV, "]}", 1);
    }
}

/* Answers one complete request for path. */
static void respond(struct conn *c, const char *path)
{
    int kind = path_kind(path);
    requests++;
    if (c->streaming || c->closing) return;
    switch (scenario) {
    case SILENT:
        break;
    case ENDLESS:
        stream_head(c);
        c->gen = G_ENDLESS;
        break;
    case TRUNCATED:
        if (kind == P_WATCH) {
            stream_head(c);
            buf_puts(&c->out, "{\"result\":{\"header\":{\"revision\":\"5\"},\"crea");
            c->closing = 1;
        } else {
            answer(c, 200, "{\"header\":{\"revision\":\"5\"},\"kv", 1);
        }
        break;
    case WRONGTYPES:
        if (kind == P_WATCH) {
            stream_head(c);
            buf_puts(&c->out, "{\"result\":{\"created\":\"true\",\"events\":{}}}\n");
        } else if (kind == P_RANGE) {
            answer(c, 200, "{\"header\":{\"revision\":\"5\"},\"kvs\":\"notalist\"}", 0);
        } else if (kind == P_GRANT) {
            answer(c, 200, "{\"ID\":1e300,\"TTL\":\"10x\"}", 0);
        } else if (kind == P_KEEPALIVE) {
            answer(c, 200, "{\"result\":{\"TTL\":[]}}", 0);
        } else {
            answer(c, 200, "{\"header\":{\"revision\":\"notanumber\"},\"succeeded\":\"yes\","
                           "\"responses\":{}}", 0);
        }
        break;
    case HUGEBODY:
        answer_huge(c, kind);
        break;
    case INT64:
        answer_int64(c, kind);
        break;
    case ERROR500:
        answer(c, 500, "{\"error\":\"etcdserver: no leader\",\"code\":14,"
                       "\"message\":\"etcdserver: no leader\"}", kind == P_WATCH);
        break;
    case WATCHCANCEL:
        if (kind == P_WATCH) {
            stream_head(c);
            buf_puts(&c->out, "{\"result\":{\"header\":{\"revision\":\"1\"},\"created\":true}}\n"
                              "{\"result\":{\"header\":{\"revision\":\"1\"},\"canceled\":true,"
                              "\"cancel_reason\":\"etcdserver: permission denied\"}}\n");
            c->closing = 1;
        } else if (kind == P_TXN) {
            break;                      /* undecided: never answered */
        } else if (kind == P_GRANT) {
            answer(c, 200, "{\"header\":{\"revision\":\"1\"},\"ID\":\"7587\",\"TTL\":\"10\"}", 0);
        } else if (kind == P_KEEPALIVE) {
            answer(c, 200, "{\"result\":{\"header\":{\"revision\":\"1\"},\"ID\":\"7587\","
                           "\"TTL\":\"10\"}}", 0);
        } else {
            answer(c, 200, "{\"header\":{\"revision\":\"1\"}}", 0);
        }
        break;
    }
}

/* Reads the complete requests in c->in; -1: not HTTP we understand. */
static int parse_requests(struct conn *c)
{
    for (;;) {
        size_t end = 0;
        for (size_t i = 0; i + 4 <= c->in.n; i++)
            if (!memcmp(c->in.p + i, "\r\n\r\n", 4)) { end = i + 4; break; }
        if (!end) return c->in.n > HEADMAX ? -1 : 0;
        /* request line: METHOD SP PATH SP HTTP/1.x */
        char *h = c->in.p, *sp1 = memchr(h, ' ', end), *sp2;
        if (!sp1 || !(sp2 = memchr(sp1 + 1, ' ', end - (size_t)(sp1 + 1 - h)))
            || (size_t)(h + end - sp2) < 8 || strncmp(sp2 + 1, "HTTP/1.", 7))
            return -1;
        long long body = 0;
        for (char *line = (char *)memchr(sp2, '\n', end - (size_t)(sp2 - h)) + 1; line < h + end - 2; ) {
            if (!strncasecmp(line, "content-length:", 15)) {
                char *e;
                body = strtoll(line + 15, &e, 10);
                if (body < 0) return -1;
            } else if (!strncasecmp(line, "transfer-encoding:", 18)) {
                return -1;              /* the client sends no chunked bodies */
            }
            char *nl = memchr(line, '\n', (size_t)(h + end - line));
            if (!nl) break;
            line = nl + 1;
        }
        if ((long long)(c->in.n - end) < body) return 0;    /* the body is still coming */
        char path[256];
        size_t plen = (size_t)(sp2 - sp1 - 1);
        if (plen >= sizeof path) plen = sizeof path - 1;
        memcpy(path, sp1 + 1, plen);
        path[plen] = 0;
        consume(&c->in, end + (size_t)body);
        respond(c, path);
    }
}

/* ---- connections ---- */

static void conn_free(struct conn *c)
{
    close(c->fd);
    free(c->in.p);
    free(c->out.p);
    free(c);
}

static void accept_all(void)
{
    while (nconns < MAXCONN) {
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0) return;
        struct conn *c = calloc(1, sizeof *c);
        if (!c) { close(fd); return; }
        nonblock(fd);
        c->fd = fd;
        c->slot = -1;
        conns[nconns++] = c;
        accepted++;
    }
}

/* Serves one connection after poll(); nonzero when it is over. */
static int serve(struct conn *c, short revents)
{
    char b[65536];
    if (revents & (POLLIN | POLLHUP | POLLERR)) {
        ssize_t r = read(c->fd, b, sizeof b);
        if (r == 0) return 1;           /* the client hung up: so do we */
        if (r < 0 && errno != EAGAIN && errno != EINTR) return 1;
        if (r > 0) {
            buf_add(&c->in, b, (size_t)r);
            if (parse_requests(c) < 0) return 1;
        }
    }
    generate(c);
    if (c->out.n > 0) {
        ssize_t w = write(c->fd, c->out.p, c->out.n);
        if (w < 0 && errno != EAGAIN && errno != EINTR) return 1;
        if (w > 0) consume(&c->out, (size_t)w);
        generate(c);
    }
    return c->closing && c->out.n == 0 && c->gen == G_NONE;
}

static void command(char *cmd)
{
    if (!strcmp(cmd, "stats")) {
        printf("conns=%ld requests=%ld\n", accepted, requests);
        fflush(stdout);
    } else if (!strncmp(cmd, "pin ", 4)) {
        pin = atoi(cmd + 4);
    } else if (*cmd) {
        fprintf(stderr, "badgw: unknown command: %s\n", cmd);
    }
}

static void read_commands(void)
{
    static char line[4096];
    static size_t len;
    ssize_t r = read(0, line + len, sizeof line - 1 - len);
    if (r == 0) exit(0);                    /* EOF: the test is done with us */
    if (r < 0) { if (errno == EINTR) return; perror("badgw: stdin"); exit(1); }
    len += (size_t)r;
    char *nl, *start = line;
    while ((nl = memchr(start, '\n', len - (size_t)(start - line)))) {
        *nl = 0;
        if (nl > start && nl[-1] == '\r') nl[-1] = 0;
        command(start);
        start = nl + 1;
    }
    len -= (size_t)(start - line);
    memmove(line, start, len);
    if (len == sizeof line - 1) len = 0;    /* an overlong line: forget it */
}

int main(int argc, char **argv)
{
    static struct pollfd pf[2 + MAXCONN];
    scenario = -1;
    for (int i = 0; argc == 3 && scenarios[i]; i++)
        if (!strcmp(argv[2], scenarios[i])) scenario = i;
    if (scenario < 0) {
        fprintf(stderr, "usage: badgw LISTEN_PORT silent|endless|truncated|wrongtypes|"
                        "huge|int64|error500|watchcancel\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(argv[1])) };
    socklen_t alen = sizeof a;
    int one = 1;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    lfd = socket(AF_INET, SOCK_STREAM, 0);
    if (lfd < 0 || setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0
        || bind(lfd, (struct sockaddr *)&a, sizeof a) < 0 || listen(lfd, 128) < 0
        || getsockname(lfd, (struct sockaddr *)&a, &alen) < 0) {
        fprintf(stderr, "badgw: cannot listen on port %s: %s\n", argv[1], strerror(errno));
        return 1;
    }
    nonblock(lfd);
    printf("%d\n", ntohs(a.sin_port));
    fflush(stdout);
    for (;;) {
        int n = 2;
        pf[0] = (struct pollfd){ .fd = 0, .events = POLLIN };
        pf[1] = (struct pollfd){ .fd = lfd, .events = nconns < MAXCONN ? POLLIN : 0 };
        for (int i = 0; i < nconns; i++) {
            struct conn *c = conns[i];
            c->slot = n;
            pf[n++] = (struct pollfd){ .fd = c->fd,
                .events = (short)(POLLIN | (c->out.n || c->gen ? POLLOUT : 0)) };
        }
        if (poll(pf, (nfds_t)n, -1) < 0) {
            if (errno == EINTR) continue;
            perror("badgw: poll");
            return 1;
        }
        for (int i = 0; i < nconns; ) {
            struct conn *c = conns[i];
            if (c->slot >= 0 && pf[c->slot].revents && serve(c, pf[c->slot].revents)) {
                conn_free(c);
                conns[i] = conns[--nconns];
            } else {
                i++;
            }
        }
        if (pf[1].revents & POLLIN) accept_all();
        if (pf[0].revents) read_commands();
    }
}
