/* The helpers every part of the engine shares (see io.h). */
#include "engine/io.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "transport/gateway.h"
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

/* Keeps the newest answer's revision (see lk_io). Keepalive answers carry
 * their header inside "result". */
static void note_revision(const lk_req *r, const cJSON *root)
{
    lk_io *io = r->sender;
    if (!io || r->sent_at < io->answer_at) return;
    int64_t rev = lk_etcd_revision(root);
    if (rev <= 0)
        rev = lk_etcd_revision(cJSON_GetObjectItemCaseSensitive(root, "result"));
    if (rev <= 0) return;
    io->answer_rev = rev;
    io->answer_at = r->sent_at;
}

cJSON *lk_answer(lk_req *r, lk_err *code, char *msg, size_t msg_size)
{
    if (r->fail_code) {  /* tls, auth: http said why */
        *code = r->fail_code;
        snprintf(msg, msg_size, "%s", r->fail_msg ? r->fail_msg : lk_err_name(r->fail_code));
        return NULL;
    }
    if (r->too_big) {
        *code = LK_ERR_PROTOCOL;
        snprintf(msg, msg_size, "etcd at %s sent an answer over %d MiB",
                 lk_req_endpoint(r), LK_MAX_ANSWER >> 20);
        return NULL;
    }
    if (lk_req_transport_failed(r)) {
        *code = LK_ERR_UNAVAILABLE;
        snprintf(msg, msg_size, "etcd at %s unreachable: %s",
                 lk_req_endpoint(r), lk_req_error(r));
        return NULL;
    }
    int grpc = -1;
    char text[LK_MSG_SIZE];
    cJSON *root = lk_etcd_parse(r->answer.data, r->answer.len, r->status,
                                text, sizeof text, &grpc);
    if (root) {
        note_revision(r, root);
        return root;
    }
    /* NotFound on a lease-carrying call is etcd saying the lease is gone. */
    *code = grpc == 5 && strstr(text, "lease") ? LK_ERR_LEASE_LOST
          : grpc == 14 || r->status == 503 ? LK_ERR_UNAVAILABLE
          : lk_auth_refusal(grpc, text) ? LK_ERR_AUTH
          : grpc >= 0 ? LK_ERR_ETCD : LK_ERR_PROTOCOL;
    snprintf(msg, msg_size, "%s%s", text, grpc == 3 && *code == LK_ERR_AUTH
             ? " (etcd has authentication on: set user and password)" : "");
    return NULL;
}

cJSON *lk_request_answer(lk_io *io, lk_req *r, const char *what)
{
    lk_err code;
    char msg[LK_MSG_SIZE];
    cJSON *root = lk_answer(r, &code, msg, sizeof msg);
    if (!root) lk_emit_fail(io, r->id, code, "%s: %s", what, msg);
    return root;
}

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

lk_req *lk_send(lk_io *io, const char *path, lk_req_done_fn done,
                void *owner, lk_buf *body, int64_t timeout_ms)
{
    return send_req(io, path, done, owner, body, timeout_ms, 0);
}

lk_req *lk_send_urgent(lk_io *io, const char *path, lk_req_done_fn done,
                       void *owner, lk_buf *body, int64_t timeout_ms)
{
    return send_req(io, path, done, owner, body, timeout_ms, 1);
}
