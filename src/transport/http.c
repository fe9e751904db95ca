#include "transport/http.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "base/backoff.h"
#include "base/clock.h"
#include "transport/grpc.h"
#include "transport/tls.h"

#define POOL_MAX 16
#define DOWN_MIN_MS 250      /* a failed endpoint rests at least this long */
#define DOWN_MAX_MS 5000
#define ATTEMPT_MIN_MS 300   /* an attempt on one endpoint gets at least this */

struct lk_http {
    CURLM *multi;
    const lk_config *cfg;      /* the engine's: TLS options */
    char **endpoints;          /* borrowed from the engine's config */
    int n_endpoints;
    int current;               /* the endpoint requests go to first */
    lk_metrics *metrics;       /* NULL: nothing counted */
    lk_failover_fn on_failover;
    void *failover_ctx;
    int64_t *down_until;       /* per endpoint: failed, rests until then */
    int *h2;                   /* gRPC, per endpoint: H2_NONE, H2_OPENING, H2_UP */
    int *fails;                /* per endpoint: failures in a row */
    long connect_timeout_ms;
    struct curl_slist *headers;
    lk_req *inflight;          /* handed to libcurl */
    int n_inflight;
    int n_counted;             /* of those, ordinary requests */
    lk_req *queue, *queue_tail;  /* ordinary requests waiting for a slot */
    lk_req *resting;           /* requests waiting to try again (retry_at) */
    lk_req *held;              /* requests the guard holds */
    lk_http_guard guard;
    int grpc;                  /* gRPC calls over HTTP/2, not the gateway */
    char *auth_line;           /* "Authorization: <token>" (gRPC: "token:
                                  <token>", metadata), or NULL */
    int auth_gen;
    int release;               /* held requests are due to go on */
    lk_err release_code;  /* ...or to fail with this */
    char *release_msg;
    CURL *pool[POOL_MAX];      /* idle easy handles, kept for reuse */
    int n_pool;
};

static void fail_req(lk_req *r, CURLcode rc, lk_err code, const char *msg);

/* Whether r's whole timeout ran out (streams have none). */
static int out_of_time(const lk_req *r)
{
    return r->timeout_ms > 0 && r->deadline <= lk_now_ms();
}

lk_http *lk_http_new(const lk_config *cfg, long connect_timeout_ms)
{
    lk_http *h = calloc(1, sizeof *h);
    if (!h) return NULL;
    int n = cfg->n_endpoints;
    h->cfg = cfg;
    h->endpoints = cfg->endpoints;
    h->n_endpoints = n;
    h->connect_timeout_ms = connect_timeout_ms;
    h->grpc = cfg->transport == LK_TRANSPORT_GRPC;
    h->down_until = calloc((size_t)n, sizeof *h->down_until);
    h->fails = calloc((size_t)n, sizeof *h->fails);
    h->h2 = calloc((size_t)n, sizeof *h->h2);
    h->multi = curl_multi_init();
    /* curl waits up to a second for "100 Continue" on bodies over 1 KiB;
     * hasleader: etcd refuses (or cancels a watch) at once when the member
     * has no leader, instead of hanging: grpc-gateway passes Grpc-Metadata-*
     * headers on as gRPC metadata */
    static const char *const headers[] = {
        "Content-Type: application/json", "Expect:", "Grpc-Metadata-hasleader: true",
    };
    /* gRPC: TE says trailers (grpc-status) are understood; hasleader as
     * metadata, as etcd's Go client sends it */
    static const char *const grpc_headers[] = {
        "Content-Type: application/grpc", "TE: trailers", "hasleader: true",
    };
    const char *const *hs = h->grpc ? grpc_headers : headers;
    size_t n_hs = h->grpc ? sizeof grpc_headers / sizeof *grpc_headers
                          : sizeof headers / sizeof *headers;
    for (size_t i = 0; i < n_hs; i++) {
        struct curl_slist *more = curl_slist_append(h->headers, hs[i]);
        if (!more) {
            lk_http_free(h);
            return NULL;
        }
        h->headers = more;
    }
    if (!h->multi || !h->down_until || !h->fails || !h->h2) {
        lk_http_free(h);
        return NULL;
    }
    return h;
}

const lk_config *lk_http_config(const lk_http *h)
{
    return h->cfg;
}

CURLM *lk_http_multi(lk_http *h)
{
    return h->multi;
}

void lk_http_set_metrics(lk_http *h, lk_metrics *m)
{
    h->metrics = m;
}

void lk_http_on_failover(lk_http *h, lk_failover_fn fn, void *ctx)
{
    h->on_failover = fn;
    h->failover_ctx = ctx;
}

void lk_http_set_guard(lk_http *h, const lk_http_guard *g)
{
    h->guard = *g;
}

int lk_http_set_token(lk_http *h, const char *token)
{
    char *line = NULL;
    if (token) {
        const char *name = h->grpc ? "token" : "Authorization";
        size_t n = strlen(token) + strlen(name) + 3;
        if (!(line = malloc(n))) return -1;
        snprintf(line, n, "%s: %s", name, token);
    }
    lk_free_secret(h->auth_line);
    h->auth_line = line;
    h->auth_gen++;
    return 0;
}

int lk_http_token_gen(const lk_http *h)
{
    return h->auth_gen;
}

void lk_http_release_held(lk_http *h, lk_err fail_code, const char *fail_msg)
{
    h->release = 1;
    h->release_code = fail_code;
    free(h->release_msg);
    h->release_msg = fail_code && fail_msg ? strdup(fail_msg) : NULL;
}

static int counted(const lk_req *r)
{
    return !r->urgent && !r->on_line;
}

/* Takes r out of the list it is in (in flight, or the queue). */
static void unlink_req(lk_req *r)
{
    lk_http *h = r->http;
    lk_req **head = r->queued ? &h->queue : r->held ? &h->held
                  : r->retry_at ? &h->resting : &h->inflight;
    if (r->queued && h->queue_tail == r) h->queue_tail = r->prev;
    if (r->prev) r->prev->next = r->next;
    else if (*head == r) *head = r->next;
    if (r->next) r->next->prev = r->prev;
    r->prev = r->next = NULL;
    if (r->queued) {
        r->queued = 0;
    } else if (r->held) {
        r->held = 0;
    } else if (r->retry_at) {
        r->retry_at = 0;
    } else {
        h->n_inflight--;
        if (counted(r)) h->n_counted--;
    }
}

/* Frees the request and returns its easy handle to the pool. */
static void free_req(lk_req *r)
{
    if (r->secret) {  /* a password, a token */
        lk_buf_free_secret(&r->body);
        lk_buf_free_secret(&r->answer);
        for (struct curl_slist *l = r->headers; l; l = l->next)
            explicit_bzero(l->data, strlen(l->data));
    }
    lk_http *h = r->http;
    if (r->easy) {
        curl_multi_remove_handle(h->multi, r->easy);
        if (h->n_pool < POOL_MAX) {
            curl_easy_reset(r->easy);
            h->pool[h->n_pool++] = r->easy;
        } else {
            curl_easy_cleanup(r->easy);
        }
    }
    int big = r->answer.cap > (1 << 20);
    curl_slist_free_all(r->headers);
    free(r->fail_msg);
    lk_buf_free(&r->body);
    lk_buf_free(&r->answer);
    free(r);
#ifdef __GLIBC__
    /* a big (or hostile) answer's memory goes back to the system; glibc
     * keeps a thread's freed blocks otherwise */
    if (big) malloc_trim(0);
#endif
}

void lk_http_free(lk_http *h)
{
    if (!h) return;
    while (h->inflight || h->queue || h->resting || h->held) {
        lk_req *r = h->inflight ? h->inflight : h->queue ? h->queue
                  : h->resting ? h->resting : h->held;
        unlink_req(r);
        free_req(r);
    }
    for (int i = 0; i < h->n_pool; i++) curl_easy_cleanup(h->pool[i]);
    if (h->multi) curl_multi_cleanup(h->multi);
    curl_slist_free_all(h->headers);
    lk_free_secret(h->auth_line);
    free(h->release_msg);
    free(h->down_until);
    free(h->fails);
    free(h->h2);
    free(h);
}

lk_req *lk_req_new(lk_http *h, const char *path, lk_req_done_fn on_done,
                   void *owner, long timeout_ms)
{
    lk_req *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->http = h;
    r->path = path;
    r->on_done = on_done;
    r->owner = owner;
    r->timeout_ms = timeout_ms;
    return r;
}

static int line_to_req(void *ctx, const char *line, size_t n)
{
    lk_req *r = ctx;
    return r->on_line(r, line, n);
}

/* Hands each whole gRPC frame's message to on_line: 1 when on_line ended
 * the stream, -1 when the stream cannot be read on (r->error says why). */
static int split_frames(lk_req *r)
{
    /* an HTTP/1.1 answer (etcd's 404 page to a call that found no HTTP/2
     * connection) or an error page is not read as frames: it is judged,
     * or sent again, once it ends */
    if (!r->grpc_ok) return 0;
    size_t at = 0;
    int stop = 0;
    for (;;) {
        const char *m;
        size_t n, used;
        int rc = lk_grpc_frame(r->answer.data + at, r->answer.len - at, LK_MAX_ANSWER,
                               &m, &n, &used, r->error, sizeof r->error);
        if (rc == LK_GRPC_PARTIAL) break;
        if (rc == LK_GRPC_BAD) {
            stop = -1;
            break;
        }
        at += used;
        if ((stop = r->on_line(r, m, n)) != 0) {
            stop = 1;
            break;
        }
    }
    lk_buf_consume(&r->answer, at);
    return stop;
}

/* Hands each complete message to on_line: nonzero when on_line ended it
 * (1) or the stream cannot be read on (-1). */
static int split_lines(lk_req *r)
{
    int stop = r->http->grpc ? split_frames(r) : lk_buf_lines(&r->answer, line_to_req, r);
    lk_buf_shrink(&r->answer);  /* after a big message, a stream stays small */
    return stop;
}

/* An upload stream's body, as libcurl asks for it: what waits, or a pause
 * until lk_req_write brings more. Only copies. */
static size_t on_read(char *p, size_t size, size_t n, void *ud)
{
    lk_req *r = ud;
    size_t avail = r->body.len - r->body_off, k = size * n < avail ? size * n : avail;
    if (k == 0) {
        r->paused = 1;
        return CURL_READFUNC_PAUSE;
    }
    memcpy(p, r->body.data + r->body_off, k);
    r->body_off += k;
    return k;
}

int lk_req_write(lk_req *r, const char *p, size_t n)
{
    if (r->body_off == r->body.len) {  /* all of it went: start again */
        lk_buf_reset(&r->body);
        r->body_off = 0;
    }
    if (lk_buf_append(&r->body, p, n)) return -1;
    if (r->paused && r->easy && !r->queued && !r->held && !r->retry_at) {
        r->paused = 0;
        curl_easy_pause(r->easy, CURLPAUSE_CONT);
    }
    return 0;
}

/* gRPC: grpc-status and grpc-message, from the answer's headers (an
 * answer with no message) or its trailers. Only collects. */
static size_t on_header(char *p, size_t size, size_t n, void *ud)
{
    lk_req *r = ud;
    size_t len = size * n;
    char line[sizeof r->grpc_msg + 16];
    if (len >= sizeof line) len = sizeof line - 1;
    memcpy(line, p, len);
    line[len] = '\0';
    while (len && (line[len - 1] == '\r' || line[len - 1] == '\n')) line[--len] = '\0';
    if (!strncmp(line, "HTTP/", 5)) {  /* a status line: only HTTP/2's 200 carries frames */
        r->grpc_ok = !strncmp(line, "HTTP/2 200", 10);
    } else if (!strncasecmp(line, "grpc-status:", 12)) {
        char *end;
        long v = strtol(line + 12, &end, 10);
        r->grpc_status = end != line + 12 && v >= 0 && v < 1000 ? (int)v : 2;  /* Unknown */
    } else if (!strncasecmp(line, "grpc-message:", 13)) {
        const char *v = line + 13;
        while (*v == ' ') v++;
        snprintf(r->grpc_msg, sizeof r->grpc_msg, "%.*s", (int)sizeof r->grpc_msg - 1, v);
        lk_grpc_unescape(r->grpc_msg);
    }
    return size * n;
}

/* libcurl's write callback: only collects (no API calls from callbacks). */
static size_t on_write(char *p, size_t size, size_t n, void *ud)
{
    lk_req *r = ud;
    if (r->answer.len + size * n > LK_MAX_ANSWER) {  /* hostile or broken */
        r->too_big = 1;
        return 0;  /* aborts the transfer */
    }
    if (lk_buf_append(&r->answer, p, size * n)) return 0;  /* aborts: no memory */
    r->received = 1;
    return size * n;
}

/* The endpoint to try: the current one, or the next that is not resting
 * (not `avoid`, the one that just failed, while there is another); when
 * all rest, the one whose rest ends first. */
static int pick_endpoint(lk_http *h, int avoid)
{
    int64_t now = lk_now_ms();
    int best = -1;
    for (int k = 0; k < h->n_endpoints; k++) {
        int i = (h->current + k) % h->n_endpoints;
        if (i == avoid && h->n_endpoints > 1) continue;
        if (h->down_until[i] <= now) return i;
        if (best < 0 || h->down_until[i] < h->down_until[best]) best = i;
    }
    return best >= 0 ? best : h->current;
}

void lk_http_endpoint_failed(lk_http *h, int i)
{
    h->fails[i]++;
    h->down_until[i] = lk_now_ms() + lk_backoff_ms(h->fails[i], DOWN_MIN_MS, DOWN_MAX_MS);
    int moved = h->current == i;
    if (moved) h->current = pick_endpoint(h, i);
    if (moved && h->current != i && h->on_failover) h->on_failover(h->failover_ctx, i, h->current);
    if (h->metrics) {
        lk_metric_add(&h->metrics->failovers[i < LK_METRIC_ENDPOINTS ? i : LK_METRIC_ENDPOINTS - 1], 1);
        lk_metric_set(&h->metrics->current_endpoint, h->current);
    }
}

static void endpoint_ok(lk_http *h, int i)
{
    h->fails[i] = 0;
    h->down_until[i] = 0;
}

/* The time this attempt may take: the request's whole timeout is shared
 * by the endpoints it may still try, so a hung member costs a part of it,
 * not all (streams: 0, no limit). Never 0 for a request with a timeout:
 * that would mean no limit at all to libcurl. */
static long attempt_timeout(const lk_req *r)
{
    if (r->timeout_ms <= 0) return 0;
    int64_t left = r->deadline - lk_now_ms();
    if (left < 1) return 1;
    int n = r->http->n_endpoints;
    int64_t share = n > 1 ? r->timeout_ms / n : left;
    if (share < ATTEMPT_MIN_MS) share = ATTEMPT_MIN_MS;
    return (long)(share < left ? share : left);
}

/* gRPC over cleartext: libcurl 7.88 breaks a connection it reuses for a
 * request that asks for HTTP/2 "by prior knowledge" (curl issue 10634,
 * fixed in 7.89), so only the request that opens an endpoint's connection
 * asks so; the others ask for HTTP/2 and, waiting (PIPEWAIT), share that
 * connection. One that finds none goes out as HTTP/1.1, which etcd's
 * gRPC does not serve: it goes again by prior knowledge (see perform). */
enum { H2_NONE, H2_OPENING, H2_UP };

static long h2_version(lk_req *r, const char *url)
{
    lk_http *h = r->http;
    r->h2_pk = 0;
    if (!strncmp(url, "https://", 8)) return (long)CURL_HTTP_VERSION_2TLS;  /* ALPN h2 */
    if (h->h2[r->endpoint] != H2_NONE) return (long)CURL_HTTP_VERSION_2_0;
    h->h2[r->endpoint] = H2_OPENING;
    r->h2_pk = 1;
    return (long)CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE;
}

/* Sets up the easy handle for r->endpoint and adds it. */
static int launch(lk_req *r)
{
    lk_http *h = r->http;
    char url[1024];
    snprintf(url, sizeof url, "%s%s", h->endpoints[r->endpoint], r->path);
    if (!r->easy) {
        r->easy = h->n_pool ? h->pool[--h->n_pool] : curl_easy_init();
        if (!r->easy) return -1;
    }
    /* this attempt's headers: the shared ones, and the token of now */
    curl_slist_free_all(r->headers);
    r->headers = NULL;
    for (struct curl_slist *l = h->headers; l; l = l->next)
        if (!(r->headers = curl_slist_append(r->headers, l->data))) return -1;
    if (h->auth_line) {
        r->secret = 1;
        if (!(r->headers = curl_slist_append(r->headers, h->auth_line))) return -1;
    }
    r->auth_gen = h->auth_gen;
    CURL *c = r->easy;
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, r->headers);
    lk_tls_setopt(c, h->cfg, r->tls12);
    if (r->upload) {  /* what has not been answered goes (again) from its start */
        r->body_off = 0;
        r->paused = 0;
        curl_easy_setopt(c, CURLOPT_POST, 1L);
        curl_easy_setopt(c, CURLOPT_READFUNCTION, on_read);
        curl_easy_setopt(c, CURLOPT_READDATA, r);
    } else {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, r->body.data ? r->body.data : "");
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)r->body.len);
    }
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(c, CURLOPT_PRIVATE, r);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, r->error);
    long timeout = attempt_timeout(r);
    long connect = h->connect_timeout_ms;
    if (timeout > 0 && timeout < connect) connect = timeout;
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, connect);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, timeout);
    /* an answer that announces more than we take is refused before any of
     * it is read (on_write caps what comes without announcing its size) */
    curl_easy_setopt(c, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)LK_MAX_ANSWER);
    curl_easy_setopt(c, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(c, CURLOPT_TCP_KEEPIDLE, 5L);
    curl_easy_setopt(c, CURLOPT_TCP_KEEPINTVL, 2L);
    if (h->grpc) {
        /* HTTP/2 (ALPN h2 over TLS, h2 from the first byte otherwise), every
         * call on the endpoint's one connection; etcd ends a call that
         * overruns its grpc-timeout too */
        curl_easy_setopt(c, CURLOPT_HTTP_VERSION, h2_version(r, url));
        curl_easy_setopt(c, CURLOPT_PIPEWAIT, 1L);
        curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
        curl_easy_setopt(c, CURLOPT_HEADERDATA, r);
        char deadline[48];
        snprintf(deadline, sizeof deadline, "grpc-timeout: %ldm", timeout);
        if (timeout > 0 && !(r->headers = curl_slist_append(r->headers, deadline))) return -1;
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, r->headers);
    }
    r->grpc_status = -1;
    r->grpc_ok = 0;
    r->grpc_msg[0] = '\0';
    r->error[0] = '\0';
    r->result = CURLE_OK;
    r->status = 0;
    r->received = 0;
    lk_buf_reset(&r->answer);
    r->tries++;
    r->sent_at = lk_now_ms();
    if (curl_multi_add_handle(h->multi, c) != CURLM_OK) return -1;
    return 0;
}

static void link_inflight(lk_req *r)
{
    lk_http *h = r->http;
    r->next = h->inflight;
    if (h->inflight) h->inflight->prev = r;
    h->inflight = r;
    h->n_inflight++;
    if (counted(r)) h->n_counted++;
}

/* r, in no list, waits for the guard. */
static void link_held(lk_req *r)
{
    lk_http *h = r->http;
    r->held = 1;
    r->next = h->held;
    if (h->held) h->held->prev = r;
    h->held = r;
}

static int guard_holds(lk_req *r)
{
    lk_http *h = r->http;
    return h->guard.before_send && h->guard.before_send(h->guard.ctx, r);
}

/* Sends queued requests while there are free slots. A request that cannot
 * be handed to libcurl now stays first in line for the next round. */
static void start_queued(lk_http *h)
{
    while (h->queue && h->n_counted < LK_MAX_REQUESTS) {
        lk_req *r = h->queue;
        if (r->patient && r->timeout_ms > 0) r->deadline = lk_now_ms() + r->timeout_ms;
        if (out_of_time(r)) {  /* its time went by in the queue: not the member's fault */
            unlink_req(r);
            link_inflight(r);
            fail_req(r, CURLE_OPERATION_TIMEDOUT, LK_ERR_UNAVAILABLE,
                     "timed out waiting for a free connection");
            continue;
        }
        if (guard_holds(r)) {
            unlink_req(r);
            link_held(r);
            continue;
        }
        r->endpoint = pick_endpoint(h, -1);
        if (launch(r)) return;
        unlink_req(r);
        link_inflight(r);
    }
}

/* r, in no list, waits at the end of the queue. */
static void enqueue(lk_req *r)
{
    lk_http *h = r->http;
    r->queued = 1;
    r->queued_at = lk_now_ms();
    r->prev = h->queue_tail;
    if (h->queue_tail) h->queue_tail->next = r;
    else h->queue = r;
    h->queue_tail = r;
}

void lk_req_patient(lk_req *r)
{
    r->patient = 1;
}

int lk_req_start(lk_req *r)
{
    lk_http *h = r->http;
    r->started_us = lk_now_us();
    if (r->timeout_ms > 0) r->deadline = lk_now_ms() + r->timeout_ms;  /* queue time counts */
    if (counted(r) && (h->n_counted >= LK_MAX_REQUESTS || h->queue)) {
        enqueue(r);
        return 0;
    }
    if (guard_holds(r)) {
        link_held(r);
        return 0;
    }
    r->endpoint = pick_endpoint(h, -1);
    if (launch(r)) {
        free_req(r);
        return -1;
    }
    link_inflight(r);
    return 0;
}

void lk_req_cancel(lk_req *r)
{
    if (!r) return;
    lk_http *h = r->http;
    unlink_req(r);
    free_req(r);
    start_queued(h);
}

int lk_req_fault(const lk_req *r, lk_err *code, char *msg, size_t msg_size)
{
    if (r->fail_code) {  /* tls, auth, an unreadable stream: we said why */
        *code = r->fail_code;
        snprintf(msg, msg_size, "%s", r->fail_msg ? r->fail_msg : lk_err_name(r->fail_code));
        return -1;
    }
    if (r->too_big) {
        *code = LK_ERR_PROTOCOL;
        snprintf(msg, msg_size, "etcd at %s sent an answer over %d MiB",
                 lk_req_endpoint(r), LK_MAX_ANSWER >> 20);
        return -1;
    }
    if (lk_req_transport_failed(r)) {
        *code = LK_ERR_UNAVAILABLE;
        snprintf(msg, msg_size, "etcd at %s unreachable: %s",
                 lk_req_endpoint(r), lk_req_error(r));
        return -1;
    }
    return 0;
}

int lk_req_transport_failed(const lk_req *r)
{
    return r->result != CURLE_OK;
}

const char *lk_req_error(const lk_req *r)
{
    return r->error[0] ? r->error : curl_easy_strerror(r->result);
}

const char *lk_req_endpoint(const lk_req *r)
{
    return r->http->endpoints[r->endpoint];
}

/* A failure that is not etcd's answer: the member is down, hung, cut
 * off or without a leader (5xx). Another member may do better; every
 * request we send is safe to repeat (puts are guarded, deletes and reads
 * idempotent; a repeated grant leaves a lease that expires unused). */
static int endpoint_fault(const lk_http *h, CURLcode rc, long status, int grpc_status)
{
    switch (rc) {
    case CURLE_OK:  /* 5xx; gRPC's Unavailable, or a call cut before its status */
        return status >= 500 || grpc_status == 14 || (h->grpc && status == 200 && grpc_status < 0);
    case CURLE_HTTP2: case CURLE_HTTP2_STREAM:  /* RST_STREAM, GOAWAY */
    case CURLE_COULDNT_CONNECT: case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY: case CURLE_OPERATION_TIMEDOUT:
    case CURLE_GOT_NOTHING: case CURLE_RECV_ERROR: case CURLE_SEND_ERROR:
    case CURLE_PARTIAL_FILE:
        return 1;
    default:
        return 0;
    }
}

int lk_http_current_index(const lk_http *h)
{
    return h->current;
}

int lk_http_endpoint_resting(const lk_http *h, int i)
{
    return i >= 0 && i < h->n_endpoints && h->down_until[i] > lk_now_ms();
}

/* Counts a finished request: by kind and result, and (not a stream) how
 * long it took from lk_req_start, retries and queueing included. */
static void count_done(const lk_req *r)
{
    lk_metrics *m = r->http->metrics;
    if (!m) return;
    lk_rq_kind kind = lk_rq_kind_of(r->path);
    int failed = r->result != CURLE_OK || r->status < 200 || r->status >= 300 || r->fail_code ||
                 r->grpc_status > 0;
    lk_metric_add(&m->requests[kind][failed], 1);
    if (!r->on_line && r->started_us)
        lk_hist_observe(&m->request_seconds[kind], lk_now_us() - r->started_us);
}

/* Ends a request: on_done, then free. */
static void finish(lk_req *r)
{
    count_done(r);
    unlink_req(r);
    r->on_done(r);
    free_req(r);
}

#define MAX_STREAMS 64

/* Delivers stream lines outside libcurl's callbacks. Handlers may cancel
 * other (non-stream) requests, so the streams are collected first. */
static void deliver_lines(lk_http *h)
{
    lk_req *streams[MAX_STREAMS];
    int n = 0;
    for (lk_req *r = h->inflight; r && n < MAX_STREAMS; r = r->next)
        if (r->on_line && (h->grpc ? r->answer.len >= LK_GRPC_PREFIX
                                   : memchr(r->answer.data ? r->answer.data : "", '\n',
                                            r->answer.len) != NULL))
            streams[n++] = r;
    for (int i = 0; i < n; i++) {
        int stop = split_lines(streams[i]);
        if (stop > 0) {
            streams[i]->result = CURLE_ABORTED_BY_CALLBACK;
            finish(streams[i]);
        } else if (stop < 0) {
            char why[CURL_ERROR_SIZE + 64];
            snprintf(why, sizeof why, "etcd at %s sent %s", lk_req_endpoint(streams[i]),
                     streams[i]->error);
            fail_req(streams[i], CURLE_RECV_ERROR, LK_ERR_PROTOCOL, why);
        }
    }
}

#define MAX_TRIES 12

/* After a fault: the request goes to the next member at once, or, when
 * every member rests (all are down, or all said "no leader" during an
 * election), waits until the first is due again, as long as its own
 * timeout allows. A stream is tried again only before it showed anything
 * (then it is new to whoever reads it); its user reconnects otherwise.
 * Whether the request is on its way again. */
static int try_again(lk_req *r)
{
    lk_http *h = r->http;
    int64_t now = lk_now_ms();
    if (r->on_line) {
        if (r->received || r->tries >= h->n_endpoints) return 0;
    } else if (r->tries >= MAX_TRIES || r->deadline - now < ATTEMPT_MIN_MS / 3) {
        return 0;
    }
    int next = pick_endpoint(h, r->endpoint);
    int64_t due = h->down_until[next];
    r->endpoint = next;
    if (due <= now || r->on_line) {
        if (guard_holds(r)) {  /* a new token is on its way: wait for it */
            unlink_req(r);
            link_held(r);
            return 1;
        }
        return launch(r) == 0;
    }
    if (due >= r->deadline - ATTEMPT_MIN_MS / 3) return 0;  /* no time left */
    unlink_req(r);  /* from the in-flight list to the resting one */
    r->retry_at = due;
    r->next = h->resting;
    if (h->resting) h->resting->prev = r;
    h->resting = r;
    return 1;
}

/* Sends the resting requests whose time has come. */
static void wake_resting(lk_http *h)
{
    int64_t now = lk_now_ms();
    for (lk_req *r = h->resting, *next; r; r = next) {
        next = r->next;
        if (r->retry_at > now) continue;
        unlink_req(r);
        if (guard_holds(r)) {
            link_held(r);
            continue;
        }
        r->endpoint = pick_endpoint(h, -1);
        if (launch(r) == 0) {
            link_inflight(r);
        } else {  /* cannot be handed to libcurl: it fails as it stands */
            link_inflight(r);
            r->result = CURLE_OUT_OF_MEMORY;
            finish(r);
        }
    }
}

int64_t lk_http_next_wakeup(const lk_http *h)
{
    if (h->release) return lk_now_ms();
    int64_t t = 0;
    for (const lk_req *r = h->held; r; r = r->next)  /* their timeouts */
        if (r->timeout_ms > 0 && (!t || r->deadline < t)) t = r->deadline;
    for (const lk_req *r = h->resting; r; r = r->next)
        if (!t || r->retry_at < t) t = r->retry_at;
    return t;
}

/* Our own reason why r failed (code, msg), over whatever libcurl says. */
static void set_fault(lk_req *r, lk_err code, const char *msg)
{
    r->fail_code = code;
    free(r->fail_msg);
    r->fail_msg = strdup(msg);
}

/* r, in flight, ends now for a reason of ours (code, msg) instead of an
 * answer. */
static void fail_req(lk_req *r, CURLcode rc, lk_err code, const char *msg)
{
    r->result = rc;
    r->status = 0;
    set_fault(r, code, msg);
    /* cut to fit: the whole message stays in fail_msg */
    snprintf(r->error, sizeof r->error, "%.*s", (int)sizeof r->error - 1, msg);
    finish(r);
}

/* Held requests whose timeout ran out fail (they waited for a token that
 * did not come in time). */
static void expire_held(lk_http *h)
{
    for (;;) {
        lk_req *r = h->held;
        while (r && !out_of_time(r)) r = r->next;
        if (!r) return;
        unlink_req(r);
        link_inflight(r);
        fail_req(r, CURLE_OPERATION_TIMEDOUT, LK_ERR_UNAVAILABLE,
                 "timed out waiting for an authentication token");
    }
}

/* The held requests go on, or fail, as lk_http_release_held said. Those
 * that start while this runs (from on_done) wait for the next release. */
static void release_held(lk_http *h)
{
    if (!h->release) return;
    h->release = 0;
    lk_err code = h->release_code;
    char *msg = h->release_msg;
    h->release_msg = NULL;
    lk_req *list = h->held;
    h->held = NULL;
    for (lk_req *r = list, *next; r; r = next) {
        next = r->next;
        r->held = 0;
        r->prev = r->next = NULL;
        if (code) {
            link_inflight(r);
            fail_req(r, CURLE_LOGIN_DENIED, code, msg ? msg : lk_err_name(code));
        } else if (out_of_time(r)) {
            link_inflight(r);
            fail_req(r, CURLE_OPERATION_TIMEDOUT, LK_ERR_UNAVAILABLE,
                     "timed out waiting for an authentication token");
        } else if (counted(r)) {
            enqueue(r);  /* the cap on requests in flight still holds */
        } else if (guard_holds(r)) {
            link_held(r);
        } else {
            r->endpoint = pick_endpoint(h, -1);
            int bad = launch(r);
            link_inflight(r);
            if (bad) fail_req(r, CURLE_OUT_OF_MEMORY, LK_ERR_NOMEM, "out of memory");
        }
    }
    free(msg);
}

/* A failed transfer that TLS explains ends now with a "tls" reason; one
 * that TLS 1.3 leaves unexplained goes again capped at TLS 1.2, which
 * hears etcd's reason. Whether r was taken care of. */
static int tls_handled(lk_req *r, CURLcode rc)
{
    lk_http *h = r->http;
    const char *ep = h->endpoints[r->endpoint];
    /* an attempt that received data had a working session: a plain fault */
    if (rc == CURLE_OK || r->too_big || r->received || strncmp(ep, "https://", 8) != 0)
        return 0;
    curl_off_t handshake = 0;
    long connects = 1;
    curl_easy_getinfo(r->easy, CURLINFO_APPCONNECT_TIME_T, &handshake);
    /* a request on a connection others opened had its handshake too, and
     * HTTP/2 speaks only after one (ALPN) */
    curl_easy_getinfo(r->easy, CURLINFO_NUM_CONNECTS, &connects);
    if (connects == 0 || rc == CURLE_HTTP2 || rc == CURLE_HTTP2_STREAM) handshake = 1;
    char msg[512];
    switch (lk_tls_failure(rc, lk_req_error(r), handshake > 0 && !r->received,
                           r->tls12, h->cfg, ep, msg, sizeof msg)) {
    case LK_TLS_FAILED:
        fail_req(r, rc, LK_ERR_TLS, msg);
        return 1;
    case LK_TLS_UNSURE:
        r->tls12 = 1;
        if (guard_holds(r)) {
            unlink_req(r);
            link_held(r);
            return 1;
        }
        if (launch(r) == 0) return 1;
        fail_req(r, CURLE_OUT_OF_MEMORY, LK_ERR_NOMEM, "out of memory");
        return 1;
    default:
        return 0;
    }
}

/* gRPC: a stream that ended inside a message (its length said more than
 * came) is unreadable, whatever its status said. */
static void note_cut_message(lk_req *r)
{
    char why[256];
    snprintf(why, sizeof why, "etcd at %s ended a gRPC stream inside a message "
             "(a truncated gRPC message)", lk_req_endpoint(r));
    set_fault(r, LK_ERR_PROTOCOL, why);
}

/* gRPC: notes whether r went over HTTP/2 (*rcp: libcurl's result, which
 * an HTTP/1.1 answer that stays one becomes a fault). One that found no connection
 * went as HTTP/1.1 (etcd's 404): it goes again, opening one; one that met
 * libcurl's bug (prior knowledge on a connection that exists) goes again
 * on that connection. Whether r went again. */
static int h2_settled(lk_req *r, CURLcode *rcp)
{
    CURLcode rc = *rcp;
    lk_http *h = r->http;
    long version = 0, connects = 1;
    curl_easy_getinfo(r->easy, CURLINFO_HTTP_VERSION, &version);
    curl_easy_getinfo(r->easy, CURLINFO_NUM_CONNECTS, &connects);
    int again;
    if (rc == CURLE_OK && version == CURL_HTTP_VERSION_2_0) {
        h->h2[r->endpoint] = H2_UP;
        again = 0;
    } else if (rc == CURLE_OK) {            /* HTTP/1.1: there was no connection */
        h->h2[r->endpoint] = H2_NONE;
        again = 1;
    } else if (rc == CURLE_HTTP2 && r->h2_pk && connects == 0) {  /* the bug */
        h->h2[r->endpoint] = H2_UP;
        again = 1;
    } else if (rc == CURLE_HTTP2_STREAM && h->h2[r->endpoint] == H2_OPENING && r->h2_pk &&
               !strstr(r->error, "end of the underlying stream")) {
        /* a reset (RST_STREAM) ends a call, not its connection: asking for
         * prior knowledge on it again would meet the bug, for every later
         * call (libcurl says "before end of the underlying stream" when the
         * connection went) */
        h->h2[r->endpoint] = H2_UP;
        again = 0;
    } else {                                /* a fault: the connection may be gone */
        if (h->h2[r->endpoint] == H2_OPENING && r->h2_pk) h->h2[r->endpoint] = H2_NONE;
        again = 0;
    }
    if (!again) return 0;
    if (r->h2_retries++ >= 2) {
        if (rc == CURLE_OK) {  /* HTTP/1.1 again: no answer of etcd's, a member without HTTP/2 */
            *rcp = CURLE_HTTP2;
            snprintf(r->error, sizeof r->error, "no HTTP/2 connection could be opened "
                     "(the calls went out as HTTP/1.1)");
        }
        return 0;
    }
    if (launch(r) == 0) return 1;
    *rcp = r->result = CURLE_OUT_OF_MEMORY;
    return 0;
}

int lk_http_perform(lk_http *h)
{
    int running = 0;
    curl_multi_perform(h->multi, &running);
    deliver_lines(h);
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(h->multi, &left))) {
        if (m->msg != CURLMSG_DONE) continue;
        lk_req *r = NULL;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&r);
        CURLcode rc = m->data.result;
        long status = 0;
        curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);
        curl_multi_remove_handle(h->multi, m->easy_handle);
        if (rc == CURLE_FILESIZE_EXCEEDED) r->too_big = 1;
        if (h->grpc && h2_settled(r, &rc)) continue;
        if (rc != CURLE_OK) {
            r->result = rc;  /* for lk_req_error */
            if (tls_handled(r, rc)) continue;
        }
        r->status = status;
        if (rc == CURLE_OK && !r->on_line && h->guard.after_answer &&
            h->guard.after_answer(h->guard.ctx, r)) {
            unlink_req(r);
            link_held(r);
            continue;
        }
        int fault = !r->too_big && endpoint_fault(h, rc, status, r->grpc_status);
        if (fault) lk_http_endpoint_failed(h, r->endpoint);
        else if (rc == CURLE_OK && !r->on_line) endpoint_ok(h, r->endpoint);
        if (fault && try_again(r)) continue;
        r->result = rc;
        r->status = status;
        if (r->on_line) {  /* lines not yet handed over, and a last one */
            /* (not after on_line asked to stop: the rest is not for it) */
            if (split_lines(r) == 0 && r->answer.len && !h->grpc)
                r->on_line(r, r->answer.data, r->answer.len);
            else if (h->grpc && r->grpc_ok && r->answer.len && !r->fail_code && rc == CURLE_OK)
                note_cut_message(r);
            lk_buf_reset(&r->answer);
        }
        finish(r);
    }
    wake_resting(h);
    expire_held(h);
    release_held(h);
    start_queued(h);
    return running;
}

int lk_http_inflight(const lk_http *h)
{
    return h->n_inflight;
}
