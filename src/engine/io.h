/* What every part of the engine uses, below all of them: the client's
 * settings, the HTTP connection to etcd, the event queue to the Lua thread
 * and the counters. Engine thread only, but for the fields marked. */
#ifndef LK_IO_H
#define LK_IO_H

#include <stdint.h>

#include "etcd/answers.h"
#include "etcd/recipes.h"
#include "etcd/requests.h"
#include "transport/auth.h"
#include "base/backoff.h"
#include "base/buf.h"
#include "base/clock.h"
#include "base/config.h"
#include "transport/http.h"
#include "transport/wire.h"
#include "base/metrics.h"
#include "engine/msg.h"

#define LK_MSG_SIZE 512

typedef struct lk_io {
    lk_config cfg;
    const lk_wire *wire;       /* how requests are encoded and answers read */
    lk_http *http;
    lk_auth *auth;             /* NULL: no user, no token */
    lk_queue *events;          /* to the Lua thread (own mutex) */
    int event_fd;              /* written when events goes non-empty */
    int wake_fd;               /* the wake-up socket (wake.h), -1: none;
                                  set by the Lua thread (atomic) */
    lk_stats stats;            /* atomics: read by the Lua thread */
    lk_metrics metrics;        /* the same, in detail (metrics.h) */
    int notes_pending;         /* NOTE events not yet taken (atomic) */
    /* The newest answer etcd gave (by send time): its header revision, and
     * when its request left. etcd's state when the request left was at
     * most that revision; once the watch stream has shown every event up
     * to it, the stream has missed nothing that happened before then (the
     * session's proof that the stream is complete). */
    int64_t answer_rev, answer_at;
} lk_io;

/* One more of a counter (atomic). */
void lk_count(int64_t *counter);

/* Hands an event to the Lua thread (NULL: out of memory, nothing sent).
 * A WATCH or OWNED event replaces an untaken one of the same id (only the
 * latest state matters), so events nobody takes stay bounded. When the
 * queue was empty, the event fd and the wake-up socket are signalled. */
void lk_emit(lk_io *io, lk_event *ev);
/* News for the Lua side's on_event (LK_EV_NOTE): what, the endpoint it
 * concerns (or NULL) and why (or NULL). At most LK_MAX_NOTES wait untaken;
 * more are dropped (counted as folded): news must not pile up while
 * nobody dispatches. */
#define LK_MAX_NOTES 64
void lk_note(lk_io *io, const char *what, const char *endpoint, const char *why);
/* A result event for request id: ok, or failed with code and message. */
void lk_emit_ok(lk_io *io, uint64_t id);
void lk_emit_fail(lk_io *io, uint64_t id, lk_err code,
                  const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* Reads a finished request's answer as the operation it answers (etcd/
 * answers.h; free *out with its _free function): 0, or -1 with a code
 * ("unavailable", "lease_lost", "auth", "etcd", "protocol" for a
 * malformed answer) and a message, *out empty. The newest answer's
 * revision is noted (lk_io). */
int lk_answer_range(lk_req *r, lk_range_resp *out, lk_err *code, char *msg, size_t msg_size);
int lk_answer_txn(lk_req *r, lk_txn_resp *out, lk_err *code, char *msg, size_t msg_size);
int lk_answer_lease(lk_req *r, lk_lease_resp *out, lk_err *code, char *msg, size_t msg_size);
int lk_answer_plain(lk_req *r, lk_plain_resp *out, lk_err *code, char *msg, size_t msg_size);
/* Only whether it succeeded (a put, a delete, a revoke). */
int lk_answer_ok(lk_req *r, lk_err *code, char *msg, size_t msg_size);

/* The answer to a request the Lua side waits for (r->id): 0, or -1 once
 * the failure went to the caller as "WHAT: why". */
int lk_request_range(lk_io *io, lk_req *r, const char *what, lk_range_resp *out);
int lk_request_txn(lk_io *io, lk_req *r, const char *what, lk_txn_resp *out);

/* Sends an etcd request (etcd/requests.h) over the transport; timeout_ms
 * 0 means the client's request timeout; urgent requests never wait behind
 * others (lease renewals, the stream's probes). The request (its answer
 * comes to done), or NULL: nothing was sent (no memory). The bytes the
 * request points to may go once it returns. */
lk_req *lk_send_range(lk_io *io, const lk_range_req *q, lk_req_done_fn done, void *owner,
                      int64_t timeout_ms, int urgent);
lk_req *lk_send_txn(lk_io *io, const lk_txn_req *q, lk_req_done_fn done, void *owner,
                    int64_t timeout_ms);
lk_req *lk_send_put(lk_io *io, const lk_put_req *q, lk_req_done_fn done, void *owner,
                    int64_t timeout_ms, int urgent);
lk_req *lk_send_delete(lk_io *io, const lk_delete_req *q, lk_req_done_fn done, void *owner,
                       int64_t timeout_ms);
/* Lease requests, all urgent. */
lk_req *lk_send_grant(lk_io *io, int64_t ttl, lk_req_done_fn done, void *owner);
lk_req *lk_send_keepalive(lk_io *io, int64_t lease, lk_req_done_fn done, void *owner,
                          int64_t timeout_ms);
lk_req *lk_send_revoke(lk_io *io, int64_t lease, lk_req_done_fn done, void *owner,
                       int64_t timeout_ms);
/* Opens a watch stream: each message to on_line (read it with
 * lk_stream_message), its end to done. NULL: not opened (no memory). */
lk_req *lk_open_watch(lk_io *io, const lk_watch_req *q, lk_req_line_fn on_line,
                      lk_req_done_fn done, void *owner);

/* ---- the keepalive flow, as a stream of typed messages ----
 * Open once; send a renewal of a lease; each answer comes back to the
 * stream's function as an lk_renewal; close drops a renewal in flight
 * unanswered. The gateway sends each renewal as a POST of its own; gRPC
 * keeps one LeaseKeepAlive call open and sends each renewal as one
 * message on it (opened at the first renewal, again after it ends). */
typedef struct lk_renewal {
    int ok;                    /* etcd answered: resp (ttl 0: the lease is gone) */
    lk_lease_resp resp;
    lk_err code;               /* !ok: why ("lease_lost", "unavailable", ...) */
    const char *msg;
    int64_t sent_at;           /* ms: when the renewal left (it proves the lease
                                  alive from then on, not from the answer) */
    int64_t rtt_us;            /* from the send to the answer */
    const char *endpoint;      /* where it went */
} lk_renewal;
typedef void (*lk_renewal_fn)(void *owner, const lk_renewal *m);

typedef struct lk_lease_stream {
    lk_io *io;
    lk_renewal_fn on_answer;
    void *owner;
    lk_req *inflight;          /* gateway: the renewal sent, not yet answered */
    lk_req *call;              /* gRPC: the LeaseKeepAlive call */
    lk_req *reading;           /* gRPC: the call whose answer is being told
                                  (closing then detaches it: it ends itself) */
    int waiting;               /* gRPC: a renewal sent on it, not yet answered */
    int64_t sent_at, sent_us;  /* ms, us: when that renewal left */
    int64_t deadline;          /* ms: when it counts as failed */
} lk_lease_stream;

void lk_lease_stream_open(lk_lease_stream *st, lk_io *io, lk_renewal_fn on_answer, void *owner);
/* Sends one renewal of lease (urgent; timeout_ms 0: the client's): 0, or
 * -1 (no memory: nothing sent). One at a time. */
int lk_lease_stream_send(lk_lease_stream *st, int64_t lease, int64_t timeout_ms);
/* Whether a renewal is on its way. */
int lk_lease_stream_waiting(const lk_lease_stream *st);
/* A renewal on a stream unanswered by its deadline fails now (the call
 * ends, its endpoint rests). When to look again (0: nothing waits). */
int64_t lk_lease_stream_check(lk_lease_stream *st, int64_t now);
void lk_lease_stream_close(lk_lease_stream *st);

/* One message of a watch stream, decoded: LK_STREAM_OK and *out (free it
 * with lk_watch_resp_free); LK_STREAM_REFUSED: not a watch result (etcd's
 * error, say: msg, *grpc_code its gRPC code or -1); LK_STREAM_MALFORMED:
 * msg says what was wrong. */
enum { LK_STREAM_OK = 0, LK_STREAM_REFUSED = -1, LK_STREAM_MALFORMED = -2 };
int lk_stream_message(const lk_req *r, const char *line, size_t n, lk_watch_resp *out,
                      char *msg, size_t msg_size, int *grpc_code);
/* How a watch stream ended: 1 when we ended it (canceled, or its handler
 * said so), else 0 with why etcd or the network ended it (code, msg). */
int lk_stream_end(lk_req *r, lk_err *code, char *msg, size_t msg_size);

#endif
