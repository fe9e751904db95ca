/* A misbehaving etcd gRPC server for the gRPC specs: it speaks HTTP/2 (h2c,
 * by prior knowledge: the client's first bytes are HTTP/2's preface) with
 * nghttp2's server API, and answers every gRPC call badly, the way a broken
 * or hostile server can.
 * usage: badgrpc LISTEN_PORT SCENARIO
 * It listens on 127.0.0.1:LISTEN_PORT (0: a free port), prints "PORT\n"
 * once listening, and answers every call per SCENARIO (unary calls once
 * their request ended, the streams Watch/Watch and Lease/LeaseKeepAlive
 * once their headers came):
 *   silent              takes the connection and its settings, never
 *                       answers a call
 *   huge_length         200, then a message whose prefix announces
 *                       0x7fffffff bytes (2 GiB), its bytes sent as flow
 *                       control allows
 *   truncated           200, a message announcing 100 bytes with 10, then
 *                       grpc-status 0
 *   compressed          200, a message with the compressed flag (none was
 *                       asked for), then grpc-status 0
 *   no_trailers         200, a valid empty message, END_STREAM on its DATA
 *                       frame: no grpc-status at all
 *   rst                 200 (no END_STREAM), then RST_STREAM INTERNAL_ERROR
 *   goaway              GOAWAY on a connection's first call, then closes it
 *   wrongtypes          200, a well-framed message whose fields have the
 *                       wrong wire types (field 1, a message in every etcd
 *                       answer, as a varint; field 2, a number or a bool
 *                       or a message, as a blob), then grpc-status 0
 *   status_unavailable  trailers only: grpc-status 14 with a grpc-message
 *   status_internal     trailers only: grpc-status 13 with a grpc-message
 *   http500             :status 500
 *   endless             200, then valid-looking 16 KiB messages (a
 *                       ResponseHeader and an unknown field's padding),
 *                       without end, as fast as flow control allows
 *   rst_first           rst for a connection's first call; every later call
 *                       on it a good answer: an empty message (any etcd
 *                       answer, its fields at their defaults), grpc-status 0
 * A request that is not HTTP/2 (HTTP/1.1, as libcurl sends when it asks
 * for h2 without prior knowledge) gets etcd's answer to it: Go's plain 404
 * ("404 page not found\n"), then the connection closes.
 * Commands, one a line, on stdin:
 *   stats   print "conns=N streams=N unary=N watches=N keepalives=N
 *           plain=N" (connections accepted, calls begun, of them unary
 *           calls, Watch and LeaseKeepAlive streams; HTTP/1.1 requests)
 * EOF on stdin ends it. Single-threaded, poll()-based, libc and nghttp2.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <nghttp2/nghttp2.h>

#define MAXCONN  512
#define LOW      (256 * 1024)       /* make more frames below this much output */
#define UNIT     16384              /* the endless scenario's message */
#define PREFIX   5                  /* a gRPC message's: flag, 4 bytes of length */
#define HUGE_LEN 0x7fffffffULL      /* what huge_length announces */

enum { SILENT, HUGE_LENGTH, TRUNCATED, COMPRESSED, NO_TRAILERS, RST, GOAWAY, WRONGTYPES,
       STATUS_UNAVAILABLE, STATUS_INTERNAL, HTTP500, ENDLESS, RST_FIRST };
static const char *const scenarios[] = {
    "silent", "huge_length", "truncated", "compressed", "no_trailers", "rst", "goaway",
    "wrongtypes", "status_unavailable", "status_internal", "http500", "endless", "rst_first",
    NULL
};

enum { P_UNKNOWN, P_H2, P_H1 };            /* what a connection speaks */
enum { B_FIXED, B_HUGE, B_ENDLESS };       /* how a body is made */

struct buf { unsigned char *p; size_t n, cap; };

struct stream {
    struct stream *prev, *next;             /* its connection's streams */
    char path[256];
    int answered;
    int body, trailers;                     /* B_*; then grpc-status 0 */
    const unsigned char *fixed;             /* B_FIXED's bytes */
    size_t fixed_len;
    unsigned long long off;                 /* bytes of the body sent so far */
};

struct conn {
    int fd, slot;               /* its pollfd slot (-1: none) */
    int proto;                  /* P_* */
    nghttp2_session *h2;
    struct stream *streams;     /* open ones, freed with the connection */
    struct buf in, out;         /* in: the first bytes, until the protocol is known */
    int calls;                  /* calls begun on it */
    int stalled;                /* nghttp2 had nothing to send last time */
    int closing;                /* HTTP/1.1: once out is written, shut down and drain */
    int shut;
};

static struct conn *conns[MAXCONN];
static int nconns, lfd, scenario;
static long accepted, streams, unary, watches, keepalives, plain;

/* The bodies of the fixed answers. */
static const unsigned char truncated_msg[] = {
    0, 0, 0, 0, 100,  1, 2, 3, 4, 5, 6, 7, 8, 9, 10      /* 100 announced, 10 sent */
};
static const unsigned char compressed_msg[] = { 1, 0, 0, 0, 0 };
static const unsigned char empty_msg[] = { 0, 0, 0, 0, 0 };
static const unsigned char wrongtypes_msg[] = {
    0, 0, 0, 0, 7,
    0x08, 0x05,                 /* field 1 (header, a message) as a varint */
    0x12, 0x03, 'a', 'b', 'c',  /* field 2 (ID, succeeded, watch_id, kvs) as a blob */
};
static unsigned char endless_unit[PREFIX + UNIT];  /* see make_unit */

#define NV(n, v) { (uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, sizeof(v) - 1, \
                   NGHTTP2_NV_FLAG_NONE }

static void die(const char *what)
{
    perror(what);
    exit(1);
}

static void buf_add(struct buf *b, const void *p, size_t n)
{
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2;
        if (!(b->p = realloc(b->p, b->cap))) die("badgrpc");
    }
    memcpy(b->p + b->n, p, n);
    b->n += n;
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

/* One endless message: a ResponseHeader (revision 1), then field 100
 * (unknown to every etcd answer, skipped by a decoder) padding it to UNIT
 * bytes: 4 + 2 (tag) + 2 (length) + 16376. */
static void make_unit(void)
{
    unsigned char *p = endless_unit;
    const unsigned char head[] = {
        0, (UNIT >> 24) & 0xff, (UNIT >> 16) & 0xff, (UNIT >> 8) & 0xff, UNIT & 0xff,
        0x0a, 0x02, 0x18, 0x01,                 /* header { revision: 1 } */
        0xa2, 0x06, 0xf8, 0x7f,                 /* field 100, 16376 bytes */
    };
    memcpy(p, head, sizeof head);
    memset(p + sizeof head, 'x', sizeof endless_unit - sizeof head);
}

/* ---- answers ---- */

static ssize_t body_read(nghttp2_session *s, int32_t id, uint8_t *out, size_t length,
                         uint32_t *flags, nghttp2_data_source *src, void *ud)
{
    (void)ud;
    struct stream *st = src->ptr;
    size_t n = 0;
    int done = 0;
    if (st->body == B_FIXED) {
        size_t left = st->fixed_len - (size_t)st->off;
        n = left < length ? left : length;
        memcpy(out, st->fixed + st->off, n);
        done = n == left;
    } else if (st->body == B_HUGE) {
        unsigned long long left = PREFIX + HUGE_LEN - st->off;
        n = left < length ? (size_t)left : length;
        memset(out, 'x', n);
        static const unsigned char prefix[PREFIX] = { 0, 0x7f, 0xff, 0xff, 0xff };
        for (size_t i = 0; i < n && st->off + i < PREFIX; i++) out[i] = prefix[st->off + i];
        done = n == left;
    } else {
        for (size_t k; n < length; n += k) {
            size_t at = (size_t)((st->off + n) % sizeof endless_unit);
            k = sizeof endless_unit - at;
            if (k > length - n) k = length - n;
            memcpy(out + n, endless_unit + at, k);
        }
    }
    st->off += n;
    if (done) {
        *flags |= NGHTTP2_DATA_FLAG_EOF;
        if (st->trailers) {
            nghttp2_nv t[] = { NV("grpc-status", "0") };
            *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
            if (nghttp2_submit_trailer(s, id, t, 1)) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        }
    }
    return (ssize_t)n;
}

/* A trailers-only answer: HTTP 200 and grpc-status code with message. */
static void trailers_only(nghttp2_session *s, int32_t id, const char *code, const char *message)
{
    nghttp2_nv h[] = { NV(":status", "200"), NV("content-type", "application/grpc"),
                       { (uint8_t *)"grpc-status", (uint8_t *)code, 11, strlen(code),
                         NGHTTP2_NV_FLAG_NONE },
                       { (uint8_t *)"grpc-message", (uint8_t *)message, 12, strlen(message),
                         NGHTTP2_NV_FLAG_NONE } };
    nghttp2_submit_response(s, id, h, 4, NULL);
}

/* 200 and application/grpc, then st's body (and trailers). */
static void answer_body(nghttp2_session *s, int32_t id, struct stream *st, int body,
                        const unsigned char *fixed, size_t len, int trailers)
{
    nghttp2_nv h[] = { NV(":status", "200"), NV("content-type", "application/grpc") };
    nghttp2_data_provider dp = { .source.ptr = st, .read_callback = body_read };
    st->body = body;
    st->fixed = fixed;
    st->fixed_len = len;
    st->trailers = trailers;
    nghttp2_submit_response(s, id, h, 2, &dp);
}

static int is_stream(const char *path)
{
    return !strcmp(path, "/etcdserverpb.Watch/Watch")
        || !strcmp(path, "/etcdserverpb.Lease/LeaseKeepAlive");
}

/* Answers one call (its request, or a stream's headers, came). */
static void respond(struct conn *c, int32_t id, struct stream *st)
{
    nghttp2_session *s = c->h2;
    nghttp2_nv ok[] = { NV(":status", "200"), NV("content-type", "application/grpc") };
    st->answered = 1;
    switch (scenario) {
    case SILENT:
        break;
    case HUGE_LENGTH:
        answer_body(s, id, st, B_HUGE, NULL, 0, 1);
        break;
    case TRUNCATED:
        answer_body(s, id, st, B_FIXED, truncated_msg, sizeof truncated_msg, 1);
        break;
    case COMPRESSED:
        answer_body(s, id, st, B_FIXED, compressed_msg, sizeof compressed_msg, 1);
        break;
    case NO_TRAILERS:
        answer_body(s, id, st, B_FIXED, empty_msg, sizeof empty_msg, 0);
        break;
    case WRONGTYPES:
        answer_body(s, id, st, B_FIXED, wrongtypes_msg, sizeof wrongtypes_msg, 1);
        break;
    case ENDLESS:
        answer_body(s, id, st, B_ENDLESS, NULL, 0, 0);
        break;
    case RST_FIRST:
        if (c->calls > 1) {
            answer_body(s, id, st, B_FIXED, empty_msg, sizeof empty_msg, 1);
            break;
        }
        /* fall through */
    case RST:
        nghttp2_submit_headers(s, NGHTTP2_FLAG_NONE, id, NULL, ok, 2, NULL);
        nghttp2_submit_rst_stream(s, NGHTTP2_FLAG_NONE, id, NGHTTP2_INTERNAL_ERROR);
        break;
    case GOAWAY:
        /* the last stream it names is this one: the client may not take
         * the call for never seen; the connection closes once it is sent */
        if (c->calls == 1) nghttp2_session_terminate_session(s, NGHTTP2_NO_ERROR);
        break;
    case STATUS_UNAVAILABLE:
        trailers_only(s, id, "14", "badgrpc: etcdserver: no leader");
        break;
    case STATUS_INTERNAL:
        trailers_only(s, id, "13", "badgrpc: internal failure");
        break;
    case HTTP500: {
        nghttp2_nv h[] = { NV(":status", "500"), NV("content-type", "text/plain") };
        nghttp2_submit_response(s, id, h, 2, NULL);
        break;
    }
    }
}

/* ---- nghttp2's callbacks ---- */

static int on_begin_headers(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    struct conn *c = ud;
    if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
    struct stream *st = calloc(1, sizeof *st);
    if (!st) return NGHTTP2_ERR_CALLBACK_FAILURE;
    st->next = c->streams;
    if (c->streams) c->streams->prev = st;
    c->streams = st;
    nghttp2_session_set_stream_user_data(s, f->hd.stream_id, st);
    return 0;
}

static int on_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *ud)
{
    (void)flags; (void)ud;
    if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
    struct stream *st = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
    if (st && namelen == 5 && !memcmp(name, ":path", 5))
        snprintf(st->path, sizeof st->path, "%.*s", (int)valuelen, (const char *)value);
    return 0;
}

static int on_frame_recv(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    struct conn *c = ud;
    int32_t id = f->hd.stream_id;
    struct stream *st = id ? nghttp2_session_get_stream_user_data(s, id) : NULL;
    if (!st || st->answered) return 0;
    int ended = (f->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    if (f->hd.type == NGHTTP2_HEADERS && f->headers.cat == NGHTTP2_HCAT_REQUEST) {
        streams++;
        c->calls++;
        if (!strcmp(st->path, "/etcdserverpb.Watch/Watch")) watches++;
        else if (!strcmp(st->path, "/etcdserverpb.Lease/LeaseKeepAlive")) keepalives++;
        else unary++;
        if (is_stream(st->path) || ended) respond(c, id, st);
    } else if (f->hd.type == NGHTTP2_DATA && ended) {
        respond(c, id, st);
    }
    return 0;
}

static void stream_free(struct conn *c, struct stream *st)
{
    if (st->prev) st->prev->next = st->next;
    else c->streams = st->next;
    if (st->next) st->next->prev = st->prev;
    free(st);
}

static int on_stream_close(nghttp2_session *s, int32_t id, uint32_t code, void *ud)
{
    (void)code;
    struct stream *st = nghttp2_session_get_stream_user_data(s, id);
    if (st) stream_free(ud, st);
    nghttp2_session_set_stream_user_data(s, id, NULL);
    return 0;
}

static nghttp2_session_callbacks *callbacks(void)
{
    static nghttp2_session_callbacks *cb;
    if (cb) return cb;
    if (nghttp2_session_callbacks_new(&cb)) die("badgrpc: nghttp2");
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
    return cb;
}

/* ---- connections ---- */

static void conn_free(struct conn *c)
{
    if (c->h2) nghttp2_session_del(c->h2);
    while (c->streams) stream_free(c, c->streams);
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

/* The first bytes decide: HTTP/2's preface, or (anything else) HTTP/1.1,
 * which gets a 404. -1: the connection is over. */
static int start(struct conn *c)
{
    static const char magic[] = NGHTTP2_CLIENT_MAGIC;
    size_t m = sizeof magic - 1, k = c->in.n < m ? c->in.n : m;
    if (memcmp(c->in.p, magic, k)) {
        static const char nf[] = "HTTP/1.1 404 Not Found\r\n"
                                 "Content-Type: text/plain; charset=utf-8\r\n"
                                 "X-Content-Type-Options: nosniff\r\n"
                                 "Content-Length: 19\r\nConnection: close\r\n\r\n"
                                 "404 page not found\n";
        c->proto = P_H1;
        plain++;
        buf_add(&c->out, nf, sizeof nf - 1);
        c->closing = 1;
        return 0;
    }
    if (k < m) return 0;                        /* more of the preface to come */
    nghttp2_settings_entry iv[] = { { NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 1000 } };
    if (nghttp2_session_server_new(&c->h2, callbacks(), c)
        || nghttp2_submit_settings(c->h2, NGHTTP2_FLAG_NONE, iv, 1))
        return -1;
    c->proto = P_H2;
    ssize_t r = nghttp2_session_mem_recv(c->h2, c->in.p, c->in.n);
    c->in.n = 0;
    return r < 0 ? -1 : 0;
}

/* Frames nghttp2 has to send, while little output waits. */
static int pump(struct conn *c)
{
    c->stalled = 0;
    while (c->h2 && c->out.n < LOW) {
        const uint8_t *d;
        ssize_t n = nghttp2_session_mem_send(c->h2, &d);
        if (n < 0) return -1;
        if (n == 0) { c->stalled = 1; break; }
        buf_add(&c->out, d, (size_t)n);
    }
    return 0;
}

/* Serves one connection after poll(); nonzero when it is over. */
static int serve(struct conn *c, short revents)
{
    unsigned char b[65536];
    if (revents & (POLLIN | POLLHUP | POLLERR)) {
        ssize_t r = read(c->fd, b, sizeof b);
        if (r == 0) return 1;           /* the client hung up: so do we */
        if (r < 0 && errno != EAGAIN && errno != EINTR) return 1;
        if (r > 0 && c->proto == P_H2) {
            if (nghttp2_session_mem_recv(c->h2, b, (size_t)r) < 0) return 1;
        } else if (r > 0 && c->proto == P_UNKNOWN) {
            buf_add(&c->in, b, (size_t)r);
            if (start(c) < 0) return 1;
        }                               /* P_H1: the rest of its request, dropped */
    }
    if (pump(c) < 0) return 1;
    if (c->out.n > 0) {
        ssize_t w = write(c->fd, c->out.p, c->out.n);
        if (w < 0 && errno != EAGAIN && errno != EINTR) return 1;
        if (w > 0) consume(&c->out, (size_t)w);
        if (pump(c) < 0) return 1;
    }
    if (c->closing && !c->out.n && !c->shut) {
        shutdown(c->fd, SHUT_WR);       /* the client closes; we read until then */
        c->shut = 1;
    }
    return c->h2 && !c->out.n && !nghttp2_session_want_read(c->h2)
        && !nghttp2_session_want_write(c->h2);
}

static void command(char *cmd)
{
    if (!strcmp(cmd, "stats")) {
        printf("conns=%ld streams=%ld unary=%ld watches=%ld keepalives=%ld plain=%ld\n",
               accepted, streams, unary, watches, keepalives, plain);
        fflush(stdout);
    } else if (*cmd) {
        fprintf(stderr, "badgrpc: unknown command: %s\n", cmd);
    }
}

static void read_commands(void)
{
    static char line[4096];
    static size_t len;
    ssize_t r = read(0, line + len, sizeof line - 1 - len);
    if (r == 0) exit(0);                    /* EOF: the test is done with us */
    if (r < 0) { if (errno == EINTR) return; die("badgrpc: stdin"); }
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
        fprintf(stderr, "usage: badgrpc LISTEN_PORT silent|huge_length|truncated|compressed|"
                        "no_trailers|rst|goaway|wrongtypes|status_unavailable|"
                        "status_internal|http500|endless|rst_first\n");
        return 2;
    }
    make_unit();
    signal(SIGPIPE, SIG_IGN);
    struct sockaddr_in a = { .sin_family = AF_INET,
                             .sin_port = htons((unsigned short)atoi(argv[1])) };
    socklen_t alen = sizeof a;
    int one = 1;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    lfd = socket(AF_INET, SOCK_STREAM, 0);
    if (lfd < 0 || setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0
        || bind(lfd, (struct sockaddr *)&a, sizeof a) < 0 || listen(lfd, 128) < 0
        || getsockname(lfd, (struct sockaddr *)&a, &alen) < 0) {
        fprintf(stderr, "badgrpc: cannot listen on port %s: %s\n", argv[1], strerror(errno));
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
            int out = c->out.n > 0 || (c->h2 && !c->stalled && nghttp2_session_want_write(c->h2));
            c->slot = n;
            pf[n++] = (struct pollfd){ .fd = c->fd, .events = (short)(POLLIN | (out ? POLLOUT : 0)) };
        }
        if (poll(pf, (nfds_t)n, -1) < 0) {
            if (errno == EINTR) continue;
            die("badgrpc: poll");
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
