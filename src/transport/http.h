/* HTTP requests to etcd over one libcurl multi handle: to its JSON gateway
 * (HTTP/1.1, a connection per request in flight), or gRPC calls (HTTP/2,
 * every call and stream multiplexed on one connection per endpoint). Everything
 * here runs on the engine thread only (libcurl-thread: one thread owns every
 * handle). A request that meets a fault that is not etcd's answer (no
 * connection, a timeout, an empty reply, a 5xx such as "no leader") is
 * retried on the next endpoint within its own timeout, and the failed
 * endpoint rests (with backoff), so a dead or hung member costs a part of
 * one request's timeout, not a failed operation. */
#ifndef LK_HTTP_H
#define LK_HTTP_H

#include <stdint.h>

#include <curl/curl.h>

#include "base/buf.h"
#include "base/config.h"
#include "base/errors.h"
#include "base/metrics.h"

/* Ordinary requests in flight at once; more wait in a queue of our own.
 * Streams and urgent requests (lease renewals) never wait: they are not
 * counted, so a renewal is never stuck behind a burst of reads. */
#define LK_MAX_REQUESTS 7

/* The largest answer (or unread stream data) taken from a server: above
 * any legitimate answer (values are at most 1 MiB, base64 adds a third). */
#define LK_MAX_ANSWER (8 * 1024 * 1024)

typedef struct lk_http lk_http;
typedef struct lk_req lk_req;

/* Called once when a request is over (answer complete, or failed). The
 * callee reads the outcome from the request; the request is freed after. */
typedef void (*lk_req_done_fn)(lk_req *r);
/* Stream requests: called with each complete message (the gateway: a
 * newline-terminated line; gRPC: a frame's message, without its prefix),
 * outside libcurl's callbacks (so it may start and cancel other requests, but
 * not its own: it returns nonzero to end the stream, and on_done follows). */
typedef int (*lk_req_line_fn)(lk_req *r, const char *line, size_t n);

struct lk_req {
    lk_http *http;
    CURL *easy;
    const char *path;
    lk_buf body;             /* what is sent */
    lk_buf answer;           /* what came back (stream: not yet consumed) */
    long timeout_ms;         /* whole request; 0 for streams */
    lk_req_done_fn on_done;
    lk_req_line_fn on_line;  /* non-NULL: a stream */
    void *owner;             /* whoever waits for it */
    uint64_t id;             /* the command whose answer this request
                                brings (lk_cmd id), 0 for the engine's own */
    uint64_t tag;            /* the owner's own use (locks: which lock, */
    int64_t tag_rev;         /* and which key of it, a write was for) */
    void *sender;            /* whoever notes its answer (io.c's lk_io) */
    int urgent;              /* never queued (lease renewals) */
    int patient;             /* its timeout counts from leaving the queue */
    int queued;              /* waiting for a free slot, not yet sent */
    int64_t queued_at;       /* ms: when it started waiting */
    int64_t sent_at;         /* ms: when it was last handed to libcurl */
    int64_t started_us;      /* us: when lk_req_start took it (metrics) */
    int64_t deadline;        /* ms: when its whole timeout runs out */
    int too_big;             /* the answer passed LK_MAX_ANSWER */
    int received;            /* some of the answer came (this attempt) */
    int64_t retry_at;        /* ms: resting until then before trying again */
    int tries;
    int endpoint;            /* index of the endpoint it went to */
    int held;                /* waiting for the guard (a token) */
    int auth_gen;            /* the token it was last sent with */
    int auth_retries;        /* sent again after "invalid auth token" */
    int tls12;               /* this attempt is capped at TLS 1.2 */
    int h2_retries;          /* gRPC: sent again for want of an HTTP/2 connection */
    int h2_pk;               /* gRPC: this attempt opens a connection (prior knowledge) */
    int upload;              /* a stream whose request goes on too: body is
                                what waits to be sent (lk_req_write) */
    size_t body_off;         /* upload: how much of body libcurl took */
    int paused;              /* upload: libcurl waits for more (paused) */
    int secret;              /* carries a password or token: its buffers
                                are overwritten before they are freed */
    struct curl_slist *headers;  /* this attempt's (the token changes) */
    lk_err fail_code;   /* set: failed before etcd answered, for a */
    char *fail_msg;          /* reason of ours ("tls", "auth") */
    CURLcode result;
    long status;
    int grpc_status;         /* gRPC: grpc-status of the answer, -1: none came */
    int grpc_ok;             /* gRPC: the answer is HTTP/2 200 (its body is frames) */
    char grpc_msg[256];      /* gRPC: grpc-message, decoded */
    char error[CURL_ERROR_SIZE];
    lk_req *prev, *next;     /* in-flight list */
};

/* A guard sees every request before it is sent and every answer before
 * its owner does (authentication: requests wait for a token, and go again
 * when etcd says the token expired). Each returns 1 to hold the request:
 * it waits until lk_http_release_held. */
typedef struct lk_http_guard {
    void *ctx;
    int (*before_send)(void *ctx, lk_req *r);
    int (*after_answer)(void *ctx, lk_req *r);
} lk_http_guard;

/* Endpoints, TLS and the connect timeout come from cfg, which must outlive
 * the lk_http. */
lk_http *lk_http_new(const lk_config *cfg, long connect_timeout_ms);
void lk_http_set_guard(lk_http *h, const lk_http_guard *g);
/* The settings it was made with. */
const lk_config *lk_http_config(const lk_http *h);
/* Where finished requests and failovers are counted (NULL: nowhere); it
 * must outlive the lk_http. */
void lk_http_set_metrics(lk_http *h, lk_metrics *m);
/* Called when endpoint `from` failed and requests go to `to` first now. */
typedef void (*lk_failover_fn)(void *ctx, int from, int to);
void lk_http_on_failover(lk_http *h, lk_failover_fn fn, void *ctx);
/* The token sent with every request from now on (NULL: none); copied. */
int lk_http_set_token(lk_http *h, const char *token);
/* Which token requests go out with now: it changes with each new one. */
int lk_http_token_gen(const lk_http *h);
/* The held requests go again (fail_code LK_OK), or all fail with that code
 * and message, in the next lk_http_perform (never inside this call). */
void lk_http_release_held(lk_http *h, lk_err fail_code, const char *fail_msg);
void lk_http_free(lk_http *h);       /* cancels whatever is in flight */
CURLM *lk_http_multi(lk_http *h);

/* A new request for path, not yet started; NULL when out of memory. */
lk_req *lk_req_new(lk_http *h, const char *path, lk_req_done_fn on_done,
                   void *owner, long timeout_ms);
/* Sends it, or queues it while LK_MAX_REQUESTS are in flight (the queue
 * time counts against its timeout). 0, or -1 (the request was freed
 * without on_done). */
int lk_req_start(lk_req *r);
/* The queue time of r does not count against its timeout: its owner bounds
 * the wait (a lock that lock() waits for). Call it before the next
 * lk_http_perform. */
void lk_req_patient(lk_req *r);
/* An upload stream's next message: appended to what waits to be sent
 * (or in place of it, once all of it went), and libcurl woken to send it.
 * 0, or -1 (no memory). */
int lk_req_write(lk_req *r, const char *p, size_t n);
/* Abandons a request in flight without calling on_done, and frees it. */
void lk_req_cancel(lk_req *r);
/* Whether the request failed before an answer came (no connection, timeout). */
int lk_req_transport_failed(const lk_req *r);
/* What every answer is checked for before its body is read: a reason of
 * ours (tls, auth), an answer over LK_MAX_ANSWER, no answer at all. 0, or
 * -1 with code and msg. */
int lk_req_fault(const lk_req *r, lk_err *code, char *msg, size_t msg_size);
/* A readable reason for a transport failure. */
const char *lk_req_error(const lk_req *r);
/* The URL it went to (endpoint + path), for messages. */
const char *lk_req_endpoint(const lk_req *r);

/* An endpoint failed beyond a single request (the watch stream's user
 * knows when a stream went silent or was refused): it rests, with
 * backoff, and requests go to others meanwhile. */
void lk_http_endpoint_failed(lk_http *h, int endpoint);
/* The endpoint requests go to first now (its index in the list). */
int lk_http_current_index(const lk_http *h);
/* Whether endpoint i failed lately and rests (requests avoid it). */
int lk_http_endpoint_resting(const lk_http *h, int i);

/* Drives transfers and calls on_done for each finished request. Returns the
 * number of requests still running. */
int lk_http_perform(lk_http *h);
int lk_http_inflight(const lk_http *h);
/* When a resting request is due to be tried again (0: none); the loop
 * must call lk_http_perform by then. */
int64_t lk_http_next_wakeup(const lk_http *h);

#endif
