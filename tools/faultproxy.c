/* A TCP proxy for the fault specs: forwards connections to etcd and, on
 * command, breaks them the ways a network or a member can break.
 * usage: faultproxy LISTEN_PORT TARGET_HOST:TARGET_PORT
 * It listens on 127.0.0.1:LISTEN_PORT (0: a free port), prints "PORT\n"
 * once listening, and reads commands, one a line, from stdin:
 *   pass             forward normally (the default)
 *   blackhole        keep every connection open but forward nothing: data
 *                    from either side is read and discarded; pass then
 *                    cuts each connection that lost data to it (a byte
 *                    stream with a hole in it is broken)
 *   cut              close every current connection (both sides)
 *   refuse           cut, and stop listening; pass/blackhole listen again
 *   drop PATH        swallow (never forward, never answer) each HTTP/1.1
 *                    request whose path starts with PATH
 *   undrop PATH      end that rule
 *   mute PATH        a silent stream: each connection whose last request
 *                    path starts with PATH stays open, its request goes to
 *                    etcd, but nothing etcd sends on it reaches the client
 *                    (read and discarded), from now on
 *   unmute PATH      end that rule; each connection that lost data to it
 *                    is cut (a byte stream with a hole in it is broken: TCP
 *                    never goes on after one)
 *   unmute-keep PATH end that rule; those connections go on, what was
 *                    discarded meanwhile lost (a lossy message stream, which
 *                    no TCP connection is: for the client's defences)
 *   delay MS         hold server->client data MS ms (0: no delay)
 *   stats            print "conns=N accepted=N dropped=N"
 * EOF on stdin ends it. Single-threaded, poll()-based, libc and nghttp2's
 * header decoder only.
 *
 * HTTP/2 (gRPC) connections get the same rules per stream: a rule's path
 * (the gateway's, /v3/watch) also names its gRPC methods
 * (/etcdserverpb.Watch/...). drop swallows a new stream's frames (etcd
 * never hears of it), and the messages a running stream sends from then
 * on (each a request of its own); mute discards what etcd sends on a
 * stream; unmute cuts a connection that lost some. Header blocks may
 * then go missing, so the proxy asks both sides (in the SETTINGS it
 * passes on) to keep no HPACK dynamic table: no block depends on another.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <nghttp2/nghttp2.h>

#define MAXCONN  512
#define MAXRULES 16
#define HEADMAX  65536          /* a longer request head is not parsed */
#define HIGH     (1 << 20)      /* stop reading a side while this much waits */

enum { HEAD, BODY, RAW };

struct buf { char *p; size_t n, cap; };
struct chunk { struct chunk *next; long long due; size_t n; char data[]; };

struct h2;

struct conn {
    struct h2 *h2;              /* an HTTP/2 connection: its frames' state */
    int cfd, sfd, ci, si;       /* fds, their pollfd slots (-1: none) */
    int connecting, cl_eof, sv_eof, shut, dead;
    int lost;                   /* data discarded by a mute since it began */
    int holed;                  /* data discarded by a black hole */
    struct buf to_srv, to_cli, head;
    struct chunk *delayed, *last;
    int state, drop;            /* request parser; drop: swallow this one */
    char path[256];             /* the last request's path (for mute) */
    long long body;             /* request body bytes still to come */
};

static struct conn *conns[MAXCONN];
static int nconns, lfd = -1, lport, blackhole, delay_ms;
static char *rules[MAXRULES], *mutes[MAXRULES];
static int nrules, nmutes;
static long accepted, dropped;
static struct addrinfo *target;

static void to_client(struct conn *c, const char *p, size_t n);
static void h2_client(struct conn *c, const char *p, size_t n);
static void h2_server(struct conn *c, const char *p, size_t n);
static void h2_free(struct h2 *h);

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void buf_add(struct buf *b, const char *p, size_t n)
{
    if (b->n + n + 1 > b->cap) {        /* + 1: the head parser wants a NUL */
        b->cap = (b->n + n + 1) * 2;
        if (!(b->p = realloc(b->p, b->cap))) { perror("faultproxy"); exit(1); }
    }
    memcpy(b->p + b->n, p, n);
    b->n += n;
    b->p[b->n] = 0;
}

/* Writes what fd takes now; -1 on error. */
static int buf_flush(int fd, struct buf *b)
{
    if (b->n == 0) return 0;
    ssize_t w = write(fd, b->p, b->n);
    if (w < 0) return errno == EAGAIN || errno == EINTR ? 0 : -1;
    memmove(b->p, b->p + w, b->n - (size_t)w);
    b->n -= (size_t)w;
    return 0;
}

static void nonblock(int fd)
{
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

static int open_listener(void)
{
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(lport) };
    socklen_t len = sizeof a;
    int one = 1, fd = socket(AF_INET, SOCK_STREAM, 0);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, 128) < 0
        || getsockname(fd, (struct sockaddr *)&a, &len) < 0) {
        fprintf(stderr, "faultproxy: cannot listen on port %d: %s\n", lport, strerror(errno));
        if (fd >= 0) close(fd);
        return -1;
    }
    nonblock(fd);
    lport = ntohs(a.sin_port);
    lfd = fd;
    return 0;
}

/* Forgets what waits to be forwarded (entering a black hole). */
static void discard(struct conn *c)
{
    if (c->to_srv.n || c->to_cli.n || c->delayed) c->holed = 1;
    c->to_srv.n = c->to_cli.n = 0;
    while (c->delayed) {
        struct chunk *next = c->delayed->next;
        free(c->delayed);
        c->delayed = next;
    }
}

static void conn_free(struct conn *c)
{
    close(c->cfd);
    if (c->sfd >= 0) close(c->sfd);
    discard(c);
    free(c->to_srv.p); free(c->to_cli.p); free(c->head.p);
    h2_free(c->h2);
    free(c);
}

/* Accepts a connection and connects it to the target; 0 when none came. */
static int accept_one(void)
{
    int cfd = accept(lfd, NULL, NULL);
    if (cfd < 0) return 0;
    struct conn *c = calloc(1, sizeof *c);
    if (!c) { close(cfd); return 0; }
    accepted++;
    nonblock(cfd);
    c->cfd = cfd;
    c->sfd = socket(target->ai_family, SOCK_STREAM, 0);
    if (c->sfd >= 0) {
        nonblock(c->sfd);
        if (connect(c->sfd, target->ai_addr, target->ai_addrlen) == 0) c->connecting = 0;
        else if (errno == EINPROGRESS) c->connecting = 1;
        else { close(c->sfd); c->sfd = -1; }
    }
    conns[nconns++] = c;
    if (c->sfd < 0 && !blackhole) c->dead = 1;  /* target down: refuse (black hole: hang) */
    return 1;
}

static void to_server(struct conn *c, const char *p, size_t n, int drop)
{
    if (blackhole && n) c->holed = 1;
    if (!drop && !blackhole && c->sfd >= 0) buf_add(&c->to_srv, p, n);
}

/* Runs client bytes through the HTTP/1.1 request parser. */
#define H2_PREFACE "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

static void client_data(struct conn *c, const char *p, size_t n)
{
    if (c->h2) { h2_client(c, p, n); return; }
    while (n > 0) {
        if (c->state == RAW) { to_server(c, p, n, 0); return; }
        if (c->state == BODY) {
            size_t k = c->body < (long long)n ? (size_t)c->body : n;
            to_server(c, p, k, c->drop);
            p += k; n -= k; c->body -= (long long)k;
            if (c->body == 0) c->state = HEAD;
            continue;
        }
        size_t old = c->head.n, end = 0;
        buf_add(&c->head, p, n);
        if (c->head.n >= sizeof H2_PREFACE - 1 && !memcmp(c->head.p, H2_PREFACE, sizeof H2_PREFACE - 1)) {
            to_server(c, c->head.p, sizeof H2_PREFACE - 1, 0);
            struct buf rest = c->head;
            c->head = (struct buf){0};
            h2_client(c, rest.p + sizeof H2_PREFACE - 1, rest.n - (sizeof H2_PREFACE - 1));
            free(rest.p);
            return;
        }
        for (size_t i = old > 3 ? old - 3 : 0; i + 4 <= c->head.n; i++)
            if (!memcmp(c->head.p + i, "\r\n\r\n", 4)) { end = i + 4; break; }
        if (!end) {
            if (c->head.n > HEADMAX) goto raw;
            return;
        }
        /* request line: METHOD SP PATH SP HTTP/1.x */
        char *h = c->head.p, *sp1 = memchr(h, ' ', end), *sp2, *line;
        if (memchr(h, 0, end) || !sp1 || !(sp2 = memchr(sp1 + 1, ' ', end - (size_t)(sp1 + 1 - h)))
            || strncmp(sp2 + 1, "HTTP/1.", 7)) goto raw;
        c->body = 0;
        for (line = strstr(sp2, "\r\n") + 2; line < h + end - 2; line = strstr(line, "\r\n") + 2) {
            if (!strncasecmp(line, "content-length:", 15)) {
                char *e;
                c->body = strtoll(line + 15, &e, 10);
                if (c->body < 0 || (*e != '\r' && *e != ' ')) goto raw;
            } else if (!strncasecmp(line, "transfer-encoding:", 18)) goto raw;
        }
        c->drop = 0;
        for (int r = 0; r < nrules; r++)
            if (!strncmp(sp1 + 1, rules[r], strlen(rules[r])) && sp1 + 1 + strlen(rules[r]) <= sp2)
                c->drop = 1;
        dropped += c->drop;
        size_t plen = (size_t)(sp2 - sp1 - 1);
        if (plen >= sizeof c->path) plen = sizeof c->path - 1;
        memcpy(c->path, sp1 + 1, plen);
        c->path[plen] = 0;
        to_server(c, h, end, c->drop);
        p += end - old; n -= end - old;
        c->head.n = 0;
        c->state = c->body > 0 ? BODY : HEAD;
    }
    return;
raw:    /* not a request we understand: forward it and the rest as they are */
    c->state = RAW;
    to_server(c, c->head.p, c->head.n, 0);
    c->head.n = 0;
}

static int muted(const struct conn *c)
{
    for (int r = 0; r < nmutes; r++)
        if (!strncmp(c->path, mutes[r], strlen(mutes[r]))) return 1;
    return 0;
}

static void server_data(struct conn *c, const char *p, size_t n)
{
    if (blackhole) {
        c->holed = 1;
        return;
    }
    if (c->h2) { h2_server(c, p, n); return; }
    if (muted(c)) {
        c->lost = 1;
        return;
    }
    to_client(c, p, n);
}

/* Passes server bytes on to the client, delayed when delay is on. */
static void to_client(struct conn *c, const char *p, size_t n)
{
    if (delay_ms <= 0 && !c->delayed) { buf_add(&c->to_cli, p, n); return; }
    struct chunk *k = malloc(sizeof *k + n);
    if (!k) { perror("faultproxy"); exit(1); }
    k->next = NULL;
    k->due = now_ms() + delay_ms;
    k->n = n;
    memcpy(k->data, p, n);
    if (c->delayed) c->last->next = k; else c->delayed = k;
    c->last = k;
}

static void command(char *cmd)
{
    char *arg = strchr(cmd, ' ');
    if (arg) { *arg++ = 0; arg += strspn(arg, " "); }
    if (!strcmp(cmd, "pass") || !strcmp(cmd, "blackhole")) {
        blackhole = cmd[0] == 'b';
        for (int i = 0; i < nconns; i++)
            if (blackhole) discard(conns[i]);
            else if ((conns[i]->sfd < 0 && !conns[i]->sv_eof) || conns[i]->holed) conns[i]->dead = 1;
        if (lfd < 0) open_listener();
    } else if (!strcmp(cmd, "cut") || !strcmp(cmd, "refuse")) {
        for (int i = 0; i < nconns; i++) conns[i]->dead = 1;
        if (cmd[0] == 'r' && lfd >= 0) { close(lfd); lfd = -1; }
    } else if (!strcmp(cmd, "drop") && arg && *arg && nrules < MAXRULES) {
        rules[nrules++] = strdup(arg);
    } else if (!strcmp(cmd, "undrop") && arg) {
        for (int r = 0; r < nrules; r++)
            if (!strcmp(rules[r], arg)) { free(rules[r]); rules[r--] = rules[--nrules]; }
    } else if (!strcmp(cmd, "mute") && arg && *arg && nmutes < MAXRULES) {
        mutes[nmutes++] = strdup(arg);
    } else if ((!strcmp(cmd, "unmute") || !strcmp(cmd, "unmute-keep")) && arg) {
        for (int r = 0; r < nmutes; r++)
            if (!strcmp(mutes[r], arg)) { free(mutes[r]); mutes[r--] = mutes[--nmutes]; }
        int keep = !strcmp(cmd, "unmute-keep");
        for (int i = 0; i < nconns; i++) {
            struct conn *c = conns[i];
            if (!c->lost || strncmp(c->path, arg, strlen(arg))) continue;
            c->lost = 0;
            if (!keep) c->dead = 1;
        }
    } else if (!strcmp(cmd, "delay") && arg) {
        delay_ms = atoi(arg);
    } else if (!strcmp(cmd, "stats")) {
        int live = 0;
        for (int i = 0; i < nconns; i++) live += !conns[i]->dead;
        printf("conns=%d accepted=%ld dropped=%ld\n", live, accepted, dropped);
        fflush(stdout);
    } else if (*cmd) {
        fprintf(stderr, "faultproxy: unknown command: %s%s%s\n", cmd, arg ? " " : "", arg ? arg : "");
    }
}

static void read_commands(void)
{
    static char line[4096];
    static size_t len;
    ssize_t r = read(0, line + len, sizeof line - 1 - len);
    if (r == 0) exit(0);                    /* EOF: the test is done with us */
    if (r < 0) { if (errno == EINTR) return; perror("faultproxy: stdin"); exit(1); }
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

/* Serves one connection after poll(); marks it dead when it is over. */
static void serve(struct conn *c, struct pollfd *pf, long long now)
{
    char b[65536];
    ssize_t r;
    short cre = c->ci >= 0 ? pf[c->ci].revents : 0, sre = c->si >= 0 ? pf[c->si].revents : 0;
    if (c->connecting && sre) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->sfd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) { close(c->sfd); c->sfd = -1; }
        c->connecting = 0;
        sre = 0;
    }
    if (cre & (POLLIN | POLLHUP | POLLERR)) {
        r = read(c->cfd, b, sizeof b);
        if (r > 0) client_data(c, b, (size_t)r);
        else if (r == 0) c->cl_eof = 1;
        else if (errno != EAGAIN && errno != EINTR) c->dead = 1;
    }
    if (c->sfd >= 0 && (sre & (POLLIN | POLLHUP | POLLERR))) {
        r = read(c->sfd, b, sizeof b);
        if (r > 0) server_data(c, b, (size_t)r);
        else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
            close(c->sfd);                  /* black hole: the client hears nothing */
            c->sfd = -1;
            c->sv_eof = r == 0 && !blackhole;   /* the client gets what is pending */
        }
    }
    while (c->delayed && c->delayed->due <= now) {
        struct chunk *k = c->delayed;
        buf_add(&c->to_cli, k->data, k->n);
        c->delayed = k->next;
        free(k);
    }
    if (buf_flush(c->cfd, &c->to_cli) < 0) c->dead = 1;
    if (c->sfd >= 0 && !c->connecting) {
        if (buf_flush(c->sfd, &c->to_srv) < 0) c->dead = 1;
        if (c->cl_eof && !c->to_srv.n && !c->shut) { shutdown(c->sfd, SHUT_WR); c->shut = 1; }
    }
    if (c->sfd < 0 && !blackhole && (!c->sv_eof || (!c->to_cli.n && !c->delayed))) c->dead = 1;
    if (c->cl_eof && blackhole) c->dead = 1;
}

int main(int argc, char **argv)
{
    static struct pollfd pf[2 + 2 * MAXCONN];
    char host[256], *colon = argc == 3 ? strrchr(argv[2], ':') : NULL;
    if (!colon || colon - argv[2] >= (long)sizeof host) {
        fprintf(stderr, "usage: faultproxy LISTEN_PORT TARGET_HOST:TARGET_PORT\n");
        return 2;
    }
    memcpy(host, argv[2], (size_t)(colon - argv[2]));
    host[colon - argv[2]] = 0;
    struct addrinfo hints = { .ai_socktype = SOCK_STREAM };
    int err = getaddrinfo(host, colon + 1, &hints, &target);
    if (err) { fprintf(stderr, "faultproxy: %s: %s\n", argv[2], gai_strerror(err)); return 1; }
    signal(SIGPIPE, SIG_IGN);
    lport = atoi(argv[1]);
    if (open_listener() < 0) return 1;
    printf("%d\n", lport);
    fflush(stdout);
    for (;;) {
        int n = 2, timeout = -1;
        long long now = now_ms();
        pf[0] = (struct pollfd){ .fd = 0, .events = POLLIN };
        pf[1] = (struct pollfd){ .fd = lfd, .events = nconns < MAXCONN ? POLLIN : 0 };
        for (int i = 0; i < nconns; i++) {
            struct conn *c = conns[i];
            size_t waiting = c->to_cli.n;
            for (struct chunk *k = c->delayed; k; k = k->next) waiting += k->n;
            c->ci = n;
            pf[n++] = (struct pollfd){ .fd = c->cfd,
                .events = (short)((!c->cl_eof && c->to_srv.n < HIGH ? POLLIN : 0) | (c->to_cli.n ? POLLOUT : 0)) };
            c->si = -1;
            if (c->sfd >= 0) {
                c->si = n;
                pf[n++] = (struct pollfd){ .fd = c->sfd, .events = (short)(c->connecting ? POLLOUT
                    : (!c->sv_eof && waiting < HIGH ? POLLIN : 0) | (c->to_srv.n ? POLLOUT : 0)) };
            }
            if (c->delayed) {
                long long t = c->delayed->due > now ? c->delayed->due - now : 0;
                if (timeout < 0 || t < timeout) timeout = (int)t;
            }
        }
        if (poll(pf, (nfds_t)n, timeout) < 0) {
            if (errno == EINTR) continue;
            perror("faultproxy: poll");
            return 1;
        }
        now = now_ms();
        int before = nconns;                /* accepted below: not polled yet */
        for (int i = 0; i < before; i++) if (!conns[i]->dead) serve(conns[i], pf, now);
        if (lfd >= 0 && (pf[1].revents & POLLIN))
            while (nconns < MAXCONN && accept_one()) {}
        if (pf[0].revents) read_commands();
        for (int i = 0; i < nconns; )
            if (conns[i]->dead) { conn_free(conns[i]); conns[i] = conns[--nconns]; }
            else i++;
    }
}

/* ---- HTTP/2 ---- */

#define H2_STREAMS 128

struct h2stream { uint32_t id; int drop; char path[256]; };

struct h2 {
    struct buf in_c, in_s;      /* partial frames from the client, the server */
    struct buf block, held;     /* a client header block being gathered, and its frames */
    nghttp2_hd_inflater *inf;   /* the client's header blocks, all of them, in order */
    struct h2stream s[H2_STREAMS];
    int next;
};

/* gRPC methods that a gateway path's rule names too */
static const char *const H2_METHODS[][2] = {
    {"/v3/kv/range", "/etcdserverpb.KV/Range"}, {"/v3/kv/put", "/etcdserverpb.KV/Put"},
    {"/v3/kv/deleterange", "/etcdserverpb.KV/DeleteRange"}, {"/v3/kv/txn", "/etcdserverpb.KV/Txn"},
    {"/v3/lease/grant", "/etcdserverpb.Lease/LeaseGrant"},
    {"/v3/lease/revoke", "/etcdserverpb.Lease/LeaseRevoke"},
    {"/v3/lease/keepalive", "/etcdserverpb.Lease/LeaseKeepAlive"},
    {"/v3/watch", "/etcdserverpb.Watch/"}, {"/v3/auth/authenticate", "/etcdserverpb.Auth/"},
};

static int h2_matches(const char *path, const char *rule)
{
    if (!strncmp(path, rule, strlen(rule))) return 1;
    for (size_t i = 0; i < sizeof H2_METHODS / sizeof *H2_METHODS; i++)
        if (!strncmp(H2_METHODS[i][0], rule, strlen(rule)) &&
            !strncmp(path, H2_METHODS[i][1], strlen(H2_METHODS[i][1])))
            return 1;
    return 0;
}

static void h2_free(struct h2 *h)
{
    if (!h) return;
    free(h->in_c.p); free(h->in_s.p); free(h->block.p); free(h->held.p);
    if (h->inf) nghttp2_hd_inflate_del(h->inf);
    free(h);
}

static struct h2stream *h2_stream(struct h2 *h, uint32_t id)
{
    for (int i = 0; i < H2_STREAMS; i++) if (h->s[i].id == id) return &h->s[i];
    return NULL;
}

/* A SETTINGS frame with HEADER_TABLE_SIZE 0 (added, or in place of the
 * sender's), into out. */
static void h2_settings(struct buf *out, const unsigned char *f, size_t len)
{
    unsigned char frame[9 + 6 * 64];
    size_t n = 0;
    for (size_t i = 0; i + 6 <= len && n < 6 * 63; i += 6) {
        if (f[9 + i] == 0 && f[9 + i + 1] == 1) continue;  /* the sender's table size */
        memcpy(frame + 9 + n, f + 9 + i, 6);
        n += 6;
    }
    static const unsigned char none[6] = {0, 1, 0, 0, 0, 0};
    memcpy(frame + 9 + n, none, 6);
    n += 6;
    memcpy(frame, f, 9);
    frame[0] = (unsigned char)(n >> 16); frame[1] = (unsigned char)(n >> 8); frame[2] = (unsigned char)n;
    buf_add(out, (const char *)frame, 9 + n);
}

/* The :path of a whole header block ("" when there is none). */
static void h2_path(struct h2 *h, char *path, size_t size)
{
    path[0] = 0;
    if (!h->inf && nghttp2_hd_inflate_new(&h->inf)) return;
    const uint8_t *in = (const uint8_t *)h->block.p;
    size_t left = h->block.n;
    for (;;) {
        nghttp2_nv nv;
        int flags = 0;
        ssize_t used = nghttp2_hd_inflate_hd2(h->inf, &nv, &flags, in, left, 1);
        if (used < 0) return;  /* broken: the server will say so */
        in += used;
        left -= (size_t)used;
        if ((flags & NGHTTP2_HD_INFLATE_EMIT) && nv.namelen == 5 && !memcmp(nv.name, ":path", 5))
            snprintf(path, size, "%.*s", (int)nv.valuelen, nv.value);
        if (flags & NGHTTP2_HD_INFLATE_FINAL) break;
        if (used == 0 && left == 0) break;
    }
    nghttp2_hd_inflate_end_headers(h->inf);
}

/* Splits data into whole frames: fn(c, frame, length, type, flags, stream). */
static void h2_frames(struct conn *c, struct buf *in, const char *p, size_t n,
                      void (*fn)(struct conn *, const unsigned char *, size_t, int, int, uint32_t))
{
    buf_add(in, p, n);
    size_t at = 0;
    while (in->n - at >= 9) {
        const unsigned char *f = (const unsigned char *)in->p + at;
        size_t len = (size_t)f[0] << 16 | (size_t)f[1] << 8 | f[2];
        if (in->n - at < 9 + len) break;
        uint32_t sid = (uint32_t)(f[5] & 0x7f) << 24 | (uint32_t)f[6] << 16 | (uint32_t)f[7] << 8 | f[8];
        fn(c, f, len, f[3], f[4], sid);
        at += 9 + len;
    }
    memmove(in->p, in->p + at, in->n - at);
    in->n -= at;
}

enum { F_DATA, F_HEADERS, F_PRIORITY, F_RST, F_SETTINGS, F_PUSH, F_PING, F_GOAWAY, F_WINDOW, F_CONT };

static void client_frame(struct conn *c, const unsigned char *f, size_t len, int type, int flags,
                         uint32_t sid)
{
    struct h2 *h = c->h2;
    if (type == F_SETTINGS && !(flags & 1)) {
        struct buf b = {0};
        h2_settings(&b, f, len);
        to_server(c, b.p, b.n, 0);
        free(b.p);
        return;
    }
    if (type == F_HEADERS || type == F_CONT) {
        buf_add(&h->held, (const char *)f, 9 + len);
        size_t from = 9, to = 9 + len;
        if (type == F_HEADERS && (flags & 0x8) && len > 0) { from++; to -= f[9] < len ? f[9] : len - 1; }
        if (type == F_HEADERS && (flags & 0x20)) from += 5;
        if (from < to) buf_add(&h->block, (const char *)f + from, to - from);
        if (!(flags & 0x4)) return;  /* CONTINUATION follows */
        struct h2stream *st = h2_stream(h, sid);
        if (!st) {
            st = &h->s[h->next];
            h->next = (h->next + 1) % H2_STREAMS;
            st->id = sid;
            h2_path(h, st->path, sizeof st->path);
            st->drop = 0;
            for (int r = 0; r < nrules; r++) st->drop |= h2_matches(st->path, rules[r]);
            dropped += st->drop;
        } else {
            char ignored[8];
            h2_path(h, ignored, sizeof ignored);  /* trailers: the table goes on */
        }
        to_server(c, h->held.p, h->held.n, st->drop);
        h->held.n = h->block.n = 0;
        return;
    }
    struct h2stream *st = sid ? h2_stream(h, sid) : NULL;
    int drop = st && st->drop;
    /* a rule made after a stream began swallows its messages from then on
     * (a LeaseKeepAlive call's renewals, each a request of its own) */
    for (int r = 0; st && !drop && type == F_DATA && len && r < nrules; r++) {
        drop = h2_matches(st->path, rules[r]);
        dropped += drop;
    }
    to_server(c, (const char *)f, 9 + len, drop);
}

static void server_frame(struct conn *c, const unsigned char *f, size_t len, int type, int flags,
                         uint32_t sid)
{
    if (type == F_SETTINGS && !(flags & 1)) {
        struct buf b = {0};
        h2_settings(&b, f, len);
        to_client(c, b.p, b.n);
        free(b.p);
        return;
    }
    struct h2stream *st = sid ? h2_stream(c->h2, sid) : NULL;
    if (st && (type == F_DATA || type == F_HEADERS || type == F_CONT || type == F_RST)) {
        for (int r = 0; r < nmutes; r++) {
            if (!h2_matches(st->path, mutes[r])) continue;
            c->lost = 1;
            snprintf(c->path, sizeof c->path, "%s", mutes[r]);  /* for unmute */
            return;
        }
    }
    to_client(c, (const char *)f, 9 + len);
}

static struct h2 *h2_of(struct conn *c)
{
    if (!c->h2 && !(c->h2 = calloc(1, sizeof *c->h2))) { perror("faultproxy"); exit(1); }
    return c->h2;
}

static void h2_client(struct conn *c, const char *p, size_t n)
{
    h2_frames(c, &h2_of(c)->in_c, p, n, client_frame);
}

static void h2_server(struct conn *c, const char *p, size_t n)
{
    h2_frames(c, &c->h2->in_s, p, n, server_frame);
}
