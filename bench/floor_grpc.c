/* The gRPC floor for `make bench`: the two calls a lock cycle cannot avoid
 * (a put-if-absent Txn and a DeleteRange on one key, as bench/floor.c sends
 * to the gateway) as gRPC calls over one HTTP/2 connection from one thread,
 * nothing else: no lease, no watch, no second thread. Two ways:
 *   curl     libcurl's HTTP/2 (what the gRPC transport is built on)
 *   nghttp2  libnghttp2 on a plain socket, each call's frames in one write
 *   nghttp2-thread  the same on a thread of its own, the caller handing
 *            each call over and sleeping until its answer (locker's shape)
 * so that `make bench` shows how fast a cycle can be on this machine with
 * each HTTP/2 stack, beside locker and etcd's Go client.
 * usage: floor-grpc URL SECONDS curl|nghttp2|nghttp2-thread   (URL: http://HOST:PORT)
 *   -> prints "cycles N seconds S cpu C p50_us P p99_us Q"
 */
#include <curl/curl.h>
#include <nghttp2/nghttp2.h>

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/eventfd.h>

#include "transport/proto/rpc.pb-c.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void die(const char *what)
{
    fprintf(stderr, "floor-grpc: %s\n", what);
    exit(1);
}

/* ---- the two request messages, gRPC-framed (5-byte prefix) ---- */

typedef struct {
    uint8_t data[256];
    size_t len;
} frame;

static void framed(frame *f, const ProtobufCMessage *m)
{
    size_t n = protobuf_c_message_get_packed_size(m);
    if (n + 5 > sizeof f->data) die("message too big");
    f->data[0] = 0;
    f->data[1] = (uint8_t)(n >> 24);
    f->data[2] = (uint8_t)(n >> 16);
    f->data[3] = (uint8_t)(n >> 8);
    f->data[4] = (uint8_t)n;
    protobuf_c_message_pack(m, f->data + 5);
    f->len = n + 5;
}

static void messages(frame *txn, frame *del)
{
    static uint8_t key[] = "/floor-grpc/x", value[] = "v";
    ProtobufCBinaryData k = {sizeof key - 1, key}, v = {sizeof value - 1, value};
    Etcdserverpb__Compare c = ETCDSERVERPB__COMPARE__INIT;
    c.key = k;
    c.target = ETCDSERVERPB__COMPARE__COMPARE_TARGET__CREATE;
    c.result = ETCDSERVERPB__COMPARE__COMPARE_RESULT__EQUAL;
    c.target_union_case = ETCDSERVERPB__COMPARE__TARGET_UNION_CREATE_REVISION;
    c.create_revision = 0;
    Etcdserverpb__PutRequest put = ETCDSERVERPB__PUT_REQUEST__INIT;
    put.key = k;
    put.value = v;
    Etcdserverpb__RequestOp op = ETCDSERVERPB__REQUEST_OP__INIT;
    op.request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_PUT;
    op.request_put = &put;
    Etcdserverpb__Compare *cs[] = {&c};
    Etcdserverpb__RequestOp *ops[] = {&op};
    Etcdserverpb__TxnRequest t = ETCDSERVERPB__TXN_REQUEST__INIT;
    t.n_compare = 1;
    t.compare = cs;
    t.n_success = 1;
    t.success = ops;
    framed(txn, &t.base);
    Etcdserverpb__DeleteRangeRequest d = ETCDSERVERPB__DELETE_RANGE_REQUEST__INIT;
    d.key = k;
    framed(del, &d.base);
}

/* ---- libcurl ---- */

typedef struct {
    CURL *easy;
    struct curl_slist *headers;
    const char *url;
    int status;     /* grpc-status, -1: none yet */
    int opened;     /* the connection is up (prior knowledge only to open it) */
} curl_floor;

static size_t curl_sink(char *p, size_t size, size_t n, void *ud)
{
    (void)p;
    (void)ud;
    return size * n;
}

static size_t curl_header(char *p, size_t size, size_t n, void *ud)
{
    curl_floor *f = ud;
    if (size * n > 12 && !strncmp(p, "grpc-status:", 12)) f->status = atoi(p + 12);
    return size * n;
}

static void curl_call(curl_floor *f, const char *path, const frame *body)
{
    char url[512];
    snprintf(url, sizeof url, "%s%s", f->url, path);
    curl_easy_setopt(f->easy, CURLOPT_URL, url);
    curl_easy_setopt(f->easy, CURLOPT_POSTFIELDS, (const char *)body->data);
    curl_easy_setopt(f->easy, CURLOPT_POSTFIELDSIZE, (long)body->len);
    /* prior knowledge again on an open connection meets libcurl 7.88's
     * bug (curl #10634): only the first call asks for it */
    curl_easy_setopt(f->easy, CURLOPT_HTTP_VERSION,
                     f->opened ? CURL_HTTP_VERSION_2_0 : CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE);
    f->status = -1;
    if (curl_easy_perform(f->easy) != CURLE_OK || f->status != 0) die("a call failed (libcurl)");
    f->opened = 1;
}

static void curl_open(curl_floor *f, const char *url)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    f->url = url;
    f->easy = curl_easy_init();
    f->headers = curl_slist_append(NULL, "Content-Type: application/grpc");
    f->headers = curl_slist_append(f->headers, "TE: trailers");
    curl_easy_setopt(f->easy, CURLOPT_HTTPHEADER, f->headers);
    curl_easy_setopt(f->easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(f->easy, CURLOPT_WRITEFUNCTION, curl_sink);
    curl_easy_setopt(f->easy, CURLOPT_HEADERFUNCTION, curl_header);
    curl_easy_setopt(f->easy, CURLOPT_HEADERDATA, f);
}

/* ---- libnghttp2 ---- */

typedef struct {
    int fd;
    nghttp2_session *session;
    char authority[256];
    const frame *body;
    size_t body_off;
    int32_t stream;
    int done;       /* the call's stream closed */
    int status;     /* grpc-status, -1: none yet */
} h2_floor;

static ssize_t h2_body(nghttp2_session *s, int32_t id, uint8_t *buf, size_t len,
                       uint32_t *flags, nghttp2_data_source *src, void *ud)
{
    (void)s;
    (void)id;
    (void)src;
    h2_floor *f = ud;
    size_t k = f->body->len - f->body_off;
    if (k > len) k = len;
    memcpy(buf, f->body->data + f->body_off, k);
    f->body_off += k;
    if (f->body_off == f->body->len) *flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)k;
}

static int h2_on_header(nghttp2_session *s, const nghttp2_frame *fr, const uint8_t *name,
                        size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                        void *ud)
{
    (void)s;
    (void)flags;
    h2_floor *f = ud;
    if (fr->hd.stream_id == f->stream && namelen == 11 && !memcmp(name, "grpc-status", 11))
        f->status = valuelen == 1 ? value[0] - '0' : 99;
    return 0;
}

static int h2_on_close(nghttp2_session *s, int32_t id, uint32_t err, void *ud)
{
    (void)s;
    (void)err;
    h2_floor *f = ud;
    if (id == f->stream) f->done = 1;
    return 0;
}

static void write_all(int fd, const uint8_t *p, size_t n)
{
    for (size_t off = 0; off < n;) {
        ssize_t w = write(fd, p + off, n - off);
        if (w <= 0) die("write");
        off += (size_t)w;
    }
}

/* Everything nghttp2 has to send, in one write (a call's frames are far
 * below the buffer; more goes out in as few writes as fit). */
static void h2_flush(h2_floor *f)
{
    uint8_t out[16384];
    size_t n = 0;
    for (;;) {
        const uint8_t *p;
        ssize_t k = nghttp2_session_mem_send(f->session, &p);
        if (k < 0) die("nghttp2_session_mem_send");
        if (k == 0) break;
        if (n + (size_t)k > sizeof out) {  /* nghttp2 counts it sent: it must go */
            write_all(f->fd, out, n);
            n = 0;
        }
        if ((size_t)k > sizeof out) write_all(f->fd, p, (size_t)k);
        else {
            memcpy(out + n, p, (size_t)k);
            n += (size_t)k;
        }
    }
    write_all(f->fd, out, n);
}

#define NV(n, v) {(uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, strlen(v), NGHTTP2_NV_FLAG_NONE}

static void h2_submit(h2_floor *f, const char *path, const frame *body)
{
    nghttp2_nv nva[] = {NV(":method", "POST"), NV(":scheme", "http"), NV(":path", path),
                        NV(":authority", f->authority), NV("content-type", "application/grpc"),
                        NV("te", "trailers")};
    nghttp2_data_provider dp = {.source.ptr = NULL, .read_callback = h2_body};
    f->body = body;
    f->body_off = 0;
    f->done = 0;
    f->status = -1;
    f->stream = nghttp2_submit_request(f->session, NULL, nva, sizeof nva / sizeof nva[0], &dp, NULL);
    if (f->stream < 0) die("nghttp2_submit_request");
    h2_flush(f);
}

/* One read's worth of frames; then whatever they call for (acks of PING
 * and SETTINGS, window updates) in one write. */
static void h2_receive(h2_floor *f)
{
    uint8_t in[16384];
    ssize_t k = read(f->fd, in, sizeof in);
    if (k <= 0) die("the connection closed");
    if (nghttp2_session_mem_recv(f->session, in, (size_t)k) < 0) die("nghttp2_session_mem_recv");
    h2_flush(f);
    if (f->done && f->status != 0) die("a call failed (nghttp2)");
}

static void h2_call(h2_floor *f, const char *path, const frame *body)
{
    h2_submit(f, path, body);
    while (!f->done) h2_receive(f);
}

/* ---- libnghttp2 on a thread of its own, as locker's engine: the caller
 * hands each call over and sleeps until its answer (eventfds both ways) ---- */

typedef struct {
    h2_floor *f;
    int to_io, from_io;
    const char *path;
    const frame *body;
} relay;

static void *io_thread(void *ud)
{
    relay *r = ud;
    struct pollfd p[2] = {{.fd = r->to_io, .events = POLLIN}, {.fd = r->f->fd, .events = POLLIN}};
    for (;;) {
        if (poll(p, 2, -1) < 0) die("poll");
        uint64_t v;
        if (p[0].revents & POLLIN) {
            if (read(r->to_io, &v, sizeof v) != sizeof v) die("eventfd");
            const char *path = __atomic_load_n(&r->path, __ATOMIC_ACQUIRE);
            if (!path) return NULL;
            h2_submit(r->f, path, r->body);
        }
        if (p[1].revents & POLLIN) {
            h2_receive(r->f);
            if (r->f->done) {
                r->f->done = 0;
                v = 1;
                if (write(r->from_io, &v, sizeof v) != sizeof v) die("eventfd");
            }
        }
    }
}

static void relay_call(relay *r, const char *path, const frame *body)
{
    r->body = body;
    __atomic_store_n(&r->path, path, __ATOMIC_RELEASE);
    uint64_t v = 1;
    if (write(r->to_io, &v, sizeof v) != sizeof v) die("eventfd");
    struct pollfd p = {.fd = r->from_io, .events = POLLIN};
    if (poll(&p, 1, -1) != 1 || read(r->from_io, &v, sizeof v) != sizeof v) die("eventfd");
}

static void h2_open(h2_floor *f, const char *url)
{
    char host[200];
    int port;
    if (sscanf(url, "http://%199[^:]:%d", host, &port) != 2) die("URL must be http://HOST:PORT");
    snprintf(f->authority, sizeof f->authority, "%s:%d", host, port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai;
    char service[16];
    snprintf(service, sizeof service, "%d", port);
    if (getaddrinfo(host, service, &hints, &ai)) die("cannot resolve the host");
    f->fd = socket(ai->ai_family, SOCK_STREAM, 0);
    if (f->fd < 0 || connect(f->fd, ai->ai_addr, ai->ai_addrlen)) die("cannot connect");
    freeaddrinfo(ai);
    int one = 1;
    setsockopt(f->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    nghttp2_session_callbacks *cb;
    nghttp2_session_callbacks_new(&cb);
    nghttp2_session_callbacks_set_on_header_callback(cb, h2_on_header);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, h2_on_close);
    if (nghttp2_session_client_new(&f->session, cb, f)) die("nghttp2_session_client_new");
    nghttp2_session_callbacks_del(cb);
    nghttp2_submit_settings(f->session, NGHTTP2_FLAG_NONE, NULL, 0);
}

static void relay_call_end(relay *r)
{
    uint64_t v = 1;
    __atomic_store_n(&r->path, NULL, __ATOMIC_RELEASE);
    if (write(r->to_io, &v, sizeof v) != sizeof v) die("eventfd");
}

int main(int argc, char **argv)
{
    if (argc < 4 || (strcmp(argv[3], "curl") && strcmp(argv[3], "nghttp2") &&
                     strcmp(argv[3], "nghttp2-thread"))) {
        fprintf(stderr, "usage: floor-grpc URL SECONDS curl|nghttp2|nghttp2-thread\n");
        return 2;
    }
    double seconds = atof(argv[2]);
    int use_curl = !strcmp(argv[3], "curl"), threaded = !strcmp(argv[3], "nghttp2-thread");
    frame txn, del;
    messages(&txn, &del);
    curl_floor cf = {0};
    h2_floor hf = {0};
    if (use_curl) curl_open(&cf, argv[1]);
    else h2_open(&hf, argv[1]);
    static const char TXN[] = "/etcdserverpb.KV/Txn", DEL[] = "/etcdserverpb.KV/DeleteRange";
    size_t cap = 1 << 20, n = 0;
    double *cycle = malloc(cap * sizeof *cycle);
    if (!cycle) die("no memory");
    for (int warm = 0; warm < 10; warm++) {
        if (use_curl) { curl_call(&cf, TXN, &txn); curl_call(&cf, DEL, &del); }
        else { h2_call(&hf, TXN, &txn); h2_call(&hf, DEL, &del); }
    }
    relay rl = {.f = &hf, .to_io = eventfd(0, 0), .from_io = eventfd(0, 0)};
    pthread_t io;
    if (threaded && (rl.to_io < 0 || rl.from_io < 0 || pthread_create(&io, NULL, io_thread, &rl)))
        die("no I/O thread");
    double c0 = cpu(), start = now();
    while (now() - start < seconds && n < cap) {
        double t0 = now();
        if (use_curl) { curl_call(&cf, TXN, &txn); curl_call(&cf, DEL, &del); }
        else if (threaded) { relay_call(&rl, TXN, &txn); relay_call(&rl, DEL, &del); }
        else { h2_call(&hf, TXN, &txn); h2_call(&hf, DEL, &del); }
        cycle[n++] = now() - t0;
    }
    if (threaded) {
        relay_call_end(&rl);
        pthread_join(io, NULL);
    }
    double took = now() - start, used = cpu() - c0;
    qsort(cycle, n, sizeof *cycle, cmp);
    printf("cycles %zu seconds %.4f cpu %.4f p50_us %.1f p99_us %.1f\n", n, took, used,
           cycle[n / 2] * 1e6, cycle[n * 99 / 100] * 1e6);
    if (use_curl) {
        curl_slist_free_all(cf.headers);
        curl_easy_cleanup(cf.easy);
    } else {
        nghttp2_session_del(hf.session);
        close(hf.fd);
    }
    free(cycle);
    return 0;
}
