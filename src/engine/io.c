/* The helpers every part of the engine shares (see io.h). */
#include "engine/io.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "transport/wire.h"
#include "engine/wake.h"

void lk_count(int64_t *counter)
{
    __atomic_add_fetch(counter, 1, __ATOMIC_RELAXED);
}

void lk_emit(lk_io *io, lk_event *ev)
{
    if (!ev) return;
    /* answers and news are each worth telling; states fold to the latest */
    int was_empty = ev->kind == LK_EV_RESULT || ev->kind == LK_EV_NOTE
                  ? lk_queue_push(io->events, ev) : lk_queue_push_latest(io->events, ev);
    if (was_empty) {
        uint64_t one = 1;
        ssize_t n = write(io->event_fd, &one, sizeof one);
        (void)n;  /* EAGAIN: the counter is already non-zero, fd readable */
        int wake = __atomic_load_n(&io->wake_fd, __ATOMIC_ACQUIRE);
        if (wake >= 0) lk_wake_signal(wake);
    }
}

static char *dup_str(const char *s, size_t *len)
{
    *len = s ? strlen(s) : 0;
    return s ? strdup(s) : NULL;
}

void lk_note(lk_io *io, const char *what, const char *endpoint, const char *why)
{
    if (__atomic_add_fetch(&io->notes_pending, 1, __ATOMIC_RELAXED) > LK_MAX_NOTES) {
        __atomic_sub_fetch(&io->notes_pending, 1, __ATOMIC_RELAXED);
        lk_metric_add(&io->metrics.folded, 1);
        return;
    }
    lk_event *ev = lk_event_new(LK_EV_NOTE, 0);
    if (!ev) {
        __atomic_sub_fetch(&io->notes_pending, 1, __ATOMIC_RELAXED);
        return;
    }
    ev->ok = 1;
    ev->name = dup_str(what, &ev->name_len);
    ev->key = dup_str(endpoint, &ev->key_len);
    if (why) ev->msg = strdup(why);
    lk_emit(io, ev);
}

void lk_emit_ok(lk_io *io, uint64_t id)
{
    lk_event *ev = lk_event_new(LK_EV_RESULT, id);
    if (ev) ev->ok = 1;
    lk_emit(io, ev);
}

void lk_emit_fail(lk_io *io, uint64_t id, lk_err code,
                  const char *fmt, ...)
{
    lk_event *ev = lk_event_new(LK_EV_RESULT, id);
    if (!ev) return;
    char msg[LK_MSG_SIZE];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    ev->code = code;
    ev->msg = strdup(msg);
    if (code > 0 && code < LK_ERR_COUNT) lk_metric_add(&io->metrics.errors[code], 1);
    lk_emit(io, ev);
}

/* Keeps the newest answer's revision (see lk_io): rev, of a request that
 * left at sent_at. */
static void note_answer(lk_io *io, int64_t sent_at, int64_t rev)
{
    if (!io || sent_at < io->answer_at || rev <= 0) return;
    io->answer_rev = rev;
    io->answer_at = sent_at;
}

static void note_revision(const lk_req *r, int64_t rev)
{
    note_answer(r->sender, r->sent_at, rev);
}

/* The transport r went by. */
static const lk_wire *wire(const lk_req *r)
{
    return lk_wire_of(lk_http_config(r->http));
}

#define ANSWER(fn, type, transport_answer)                                            \
int fn(lk_req *r, type *out, lk_err *code, char *msg, size_t msg_size)             \
{                                                                                   \
    if (wire(r)->transport_answer(r, out, code, msg, msg_size)) return -1;          \
    note_revision(r, out->revision);                                                \
    return 0;                                                                       \
}
ANSWER(lk_answer_range, lk_range_resp, answer_range)
ANSWER(lk_answer_txn, lk_txn_resp, answer_txn)
ANSWER(lk_answer_lease, lk_lease_resp, answer_lease)
ANSWER(lk_answer_plain, lk_plain_resp, answer_plain)

int lk_answer_ok(lk_req *r, lk_err *code, char *msg, size_t msg_size)
{
    lk_plain_resp p;
    return lk_answer_plain(r, &p, code, msg, msg_size);
}

#define REQUEST(fn, type, answer)                                                     \
int fn(lk_io *io, lk_req *r, const char *what, type *out)                          \
{                                                                                   \
    lk_err code;                                                                    \
    char msg[LK_MSG_SIZE];                                                          \
    if (answer(r, out, &code, msg, sizeof msg) == 0) return 0;                      \
    lk_emit_fail(io, r->id, code, "%s: %s", what, msg);                             \
    return -1;                                                                      \
}
REQUEST(lk_request_range, lk_range_resp, lk_answer_range)
REQUEST(lk_request_txn, lk_txn_resp, lk_answer_txn)

static lk_req *send_req(lk_io *io, const char *path, lk_req_done_fn done,
                        void *owner, lk_buf *body, int64_t timeout_ms,
                        int urgent)
{
    long t = (long)(timeout_ms ? timeout_ms : io->cfg.timeout_ms);
    lk_req *r = lk_req_new(io->http, path, done, owner, t);
    if (!r) {
        lk_buf_free(body);
        return NULL;
    }
    r->urgent = urgent;
    r->sender = io;
    r->body = *body;                 /* takes the body over */
    *body = (lk_buf){0};
    lk_count(&io->stats.requests);
    return lk_req_start(r) == 0 ? r : NULL;
}

/* Sends an encoded body (encoded: 0), or frees it (no memory). */
static lk_req *send_body(lk_io *io, int encoded, const char *path, lk_req_done_fn done,
                         void *owner, lk_buf *body, int64_t timeout_ms, int urgent)
{
    if (encoded) {
        lk_buf_free(body);
        return NULL;
    }
    return send_req(io, path, done, owner, body, timeout_ms, urgent);
}

lk_req *lk_send_range(lk_io *io, const lk_range_req *q, lk_req_done_fn done, void *owner,
                      int64_t timeout_ms, int urgent)
{
    lk_buf body = {0};
    return send_body(io, io->wire->range_body(&body, q), io->wire->range, done, owner, &body,
                     timeout_ms, urgent);
}

lk_req *lk_send_txn(lk_io *io, const lk_txn_req *q, lk_req_done_fn done, void *owner,
                    int64_t timeout_ms)
{
    lk_buf body = {0};
    return send_body(io, io->wire->txn_body(&body, q), io->wire->txn, done, owner, &body,
                     timeout_ms, 0);
}

lk_req *lk_send_put(lk_io *io, const lk_put_req *q, lk_req_done_fn done, void *owner,
                    int64_t timeout_ms, int urgent)
{
    lk_buf body = {0};
    return send_body(io, io->wire->put_body(&body, q), io->wire->put, done, owner, &body,
                     timeout_ms, urgent);
}

lk_req *lk_send_delete(lk_io *io, const lk_delete_req *q, lk_req_done_fn done, void *owner,
                       int64_t timeout_ms)
{
    lk_buf body = {0};
    return send_body(io, io->wire->delete_body(&body, q), io->wire->del, done, owner, &body,
                     timeout_ms, 0);
}

lk_req *lk_send_grant(lk_io *io, int64_t ttl, lk_req_done_fn done, void *owner)
{
    lk_buf body = {0};
    return send_body(io, io->wire->grant_body(&body, ttl), io->wire->grant, done, owner, &body,
                     0, 1);
}

lk_req *lk_send_keepalive(lk_io *io, int64_t lease, lk_req_done_fn done, void *owner,
                          int64_t timeout_ms)
{
    lk_buf body = {0};
    return send_body(io, io->wire->lease_body(&body, lease), io->wire->keepalive, done, owner,
                     &body, timeout_ms, 1);
}

lk_req *lk_send_revoke(lk_io *io, int64_t lease, lk_req_done_fn done, void *owner,
                       int64_t timeout_ms)
{
    lk_buf body = {0};
    return send_body(io, io->wire->lease_body(&body, lease), io->wire->revoke, done, owner,
                     &body, timeout_ms, 1);
}

lk_req *lk_open_watch(lk_io *io, const lk_watch_req *q, lk_req_line_fn on_line,
                      lk_req_done_fn done, void *owner)
{
    lk_req *r = lk_req_new(io->http, io->wire->watch, done, owner, 0);
    if (!r) return NULL;
    if (io->wire->watch_body(&r->body, q)) {  /* no memory */
        lk_buf_free(&r->body);
        free(r);
        return NULL;
    }
    r->on_line = on_line;
    lk_count(&io->stats.requests);
    return lk_req_start(r) == 0 ? r : NULL;
}

int lk_stream_message(const lk_req *r, const char *line, size_t n, lk_watch_resp *out,
                      char *msg, size_t msg_size, int *grpc_code)
{
    int rc = wire(r)->stream_message(r, line, n, out, msg, msg_size, grpc_code);
    return rc == 0 ? LK_STREAM_OK : rc == -1 ? LK_STREAM_REFUSED : LK_STREAM_MALFORMED;
}

int lk_stream_end(lk_req *r, lk_err *code, char *msg, size_t msg_size)
{
    return wire(r)->stream_end(r, code, msg, msg_size);
}

/* ---- the keepalive flow ---- */

void lk_lease_stream_open(lk_lease_stream *st, lk_io *io, lk_renewal_fn on_answer, void *owner)
{
    *st = (lk_lease_stream){.io = io, .on_answer = on_answer, .owner = owner};
}

/* gRPC: the renewal in flight is answered (m), or failed (code, why). */
static void renewal_over(lk_lease_stream *st, const lk_lease_resp *resp, lk_err code,
                         const char *why, const char *endpoint)
{
    st->waiting = 0;
    lk_renewal m = {.ok = resp != NULL, .code = code, .msg = why, .sent_at = st->sent_at,
                    .rtt_us = lk_now_us() - st->sent_us, .endpoint = endpoint};
    if (resp) {
        m.resp = *resp;
        note_answer(st->io, st->sent_at, resp->revision);
    }
    st->on_answer(st->owner, &m);
}

static int on_renewal_message(lk_req *r, const char *p, size_t n)
{
    lk_lease_stream *st = r->owner;
    lk_lease_resp resp;
    char msg[LK_MSG_SIZE];
    int bad = st->io->wire->lease_message(p, n, &resp, msg, sizeof msg) != 0;
    if (!st->waiting && !bad) return 0;
    /* what the answer sets off may close the flow: the call is then left
     * to end here, not freed under this handler */
    st->reading = r;
    if (bad) {
        char why[LK_MSG_SIZE + 64];
        snprintf(why, sizeof why, "%s (from %s)", msg, lk_req_endpoint(r));
        st->call = NULL;  /* an unreadable stream: this call ends */
        renewal_over(st, NULL, LK_ERR_PROTOCOL, why, lk_req_endpoint(r));
    } else {
        renewal_over(st, &resp, LK_OK, NULL, lk_req_endpoint(r));
    }
    st->reading = NULL;
    return st->call == r ? 0 : 1;
}

static void on_renewal_call_end(lk_req *r)
{
    lk_lease_stream *st = r->owner;
    if (st->call != r) return;  /* detached: nobody's news */
    st->call = NULL;
    if (!st->waiting) return;
    lk_err code = LK_ERR_UNAVAILABLE;
    char msg[LK_MSG_SIZE];
    if (st->io->wire->stream_end(r, &code, msg, sizeof msg))
        snprintf(msg, sizeof msg, "the lease renewal stream ended");
    renewal_over(st, NULL, code, msg, lk_req_endpoint(r));
}

/* gRPC: the renewal as a message on the call (opened when there is none). */
static int stream_send(lk_lease_stream *st, int64_t lease, int64_t timeout_ms)
{
    lk_io *io = st->io;
    lk_buf frame = {0};
    if (io->wire->lease_body(&frame, lease)) {
        lk_buf_free(&frame);
        return -1;
    }
    int64_t now = lk_now_ms();
    int rc = 0;
    if (st->call) {
        rc = lk_req_write(st->call, frame.data, frame.len);
        lk_buf_free(&frame);
    } else {
        lk_req *r = lk_req_new(io->http, io->wire->keepalive, on_renewal_call_end, st, 0);
        if (!r) {
            lk_buf_free(&frame);
            return -1;
        }
        r->on_line = on_renewal_message;
        r->upload = 1;
        r->urgent = 1;
        r->sender = io;
        r->body = frame;
        lk_count(&io->stats.requests);
        if (lk_req_start(r)) return -1;
        st->call = r;
    }
    if (rc) return -1;
    st->waiting = 1;
    st->sent_at = now;  /* handed to the transport: the lease is alive from here */
    st->sent_us = lk_now_us();
    st->deadline = now + (timeout_ms ? timeout_ms : io->cfg.timeout_ms);
    return 0;
}

int64_t lk_lease_stream_check(lk_lease_stream *st, int64_t now)
{
    if (!st->waiting) return 0;
    if (now < st->deadline) return st->deadline;
    lk_req *r = st->call;
    char why[LK_MSG_SIZE];
    snprintf(why, sizeof why, "etcd at %s did not answer a lease renewal in time",
             r ? lk_req_endpoint(r) : "?");
    const char *ep = r ? lk_req_endpoint(r) : NULL;
    if (r) {
        lk_http_endpoint_failed(st->io->http, r->endpoint);  /* the next call goes elsewhere */
        st->call = NULL;
        renewal_over(st, NULL, LK_ERR_UNAVAILABLE, why, ep);
        lk_req_cancel(r);
    } else {
        renewal_over(st, NULL, LK_ERR_UNAVAILABLE, why, ep);
    }
    return 0;
}

static void on_renewal(lk_req *r)
{
    lk_lease_stream *st = r->owner;
    st->inflight = NULL;
    char msg[LK_MSG_SIZE];
    lk_renewal m = {.msg = msg, .sent_at = r->sent_at, .rtt_us = lk_now_us() - r->started_us,
                    .endpoint = lk_req_endpoint(r)};
    m.ok = lk_answer_lease(r, &m.resp, &m.code, msg, sizeof msg) == 0;
    st->on_answer(st->owner, &m);
}

int lk_lease_stream_send(lk_lease_stream *st, int64_t lease, int64_t timeout_ms)
{
    if (st->io->wire->lease_message) return st->waiting ? 0 : stream_send(st, lease, timeout_ms);
    if (st->inflight) return 0;
    st->inflight = lk_send_keepalive(st->io, lease, on_renewal, st, timeout_ms);
    return st->inflight ? 0 : -1;
}

int lk_lease_stream_waiting(const lk_lease_stream *st)
{
    return st->inflight != NULL || st->waiting;
}

void lk_lease_stream_close(lk_lease_stream *st)
{
    if (st->inflight) lk_req_cancel(st->inflight);
    if (st->call && st->call != st->reading) lk_req_cancel(st->call);
    st->inflight = st->call = NULL;
    st->waiting = 0;
}
