/* The session: the client's one lease (granted on first use, renewed every
 * TTL/3 with one POST each, revoked at close) and its one watch stream on the
 * client's prefix (resumed from the last revision seen after any drop). */
#include "internal.h"

#include <stdio.h>
#include <string.h>

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 2000
#define REVOKE_TIMEOUT_MS 2000

static int64_t backoff(int failures)
{
    int64_t ms = BACKOFF_MIN_MS;
    for (int i = 1; i < failures && ms < BACKOFF_MAX_MS; i++) ms *= 2;
    return ms < BACKOFF_MAX_MS ? ms : BACKOFF_MAX_MS;
}

static int64_t renew_every_ms(const lk_engine *e)
{
    return e->cfg.ttl * 1000 / 3;
}

/* Declare jeopardy a little before the lease could end on the server. */
static int64_t jeopardy_margin_ms(const lk_engine *e)
{
    int64_t m = e->cfg.ttl * 1000 / 10;
    return m < 500 ? m : 500;
}

static void confirmed(lk_engine *e, int64_t sent_at, int64_t ttl)
{
    lk_session *s = &e->session;
    s->expires = sent_at + ttl * 1000;
    s->next_keepalive = lk_now_ms() + renew_every_ms(e);
    if (s->jeopardy) {
        s->jeopardy = 0;
        lk_locks_renewed(e);
    }
}

static void on_grant(lk_req *r)
{
    lk_engine *e = r->owner;
    lk_session *s = &e->session;
    s->lease_req = NULL;
    const char *code;
    char msg[LK_MSG_SIZE];
    cJSON *root = lk_answer(r, &code, msg, sizeof msg);
    int64_t id = root ? lk_etcd_int(root, "ID") : 0;
    int64_t ttl = root ? lk_etcd_int(root, "TTL") : 0;
    cJSON_Delete(root);
    if (root && (id == 0 || ttl <= 0)) {
        code = "protocol";
        snprintf(msg, sizeof msg, "lease grant answer without ID or TTL");
    }
    if (!root || id == 0 || ttl <= 0) {
        s->grant_failures++;
        s->grant_retry_at = lk_now_ms() + backoff(s->grant_failures);
        lk_locks_session_failed(e, code, msg);
        return;
    }
    s->grant_failures = 0;
    s->lease = id;
    __atomic_store_n(&e->lease_seen, id, __ATOMIC_RELEASE);
    s->jeopardy = 0;
    confirmed(e, (int64_t)r->id, ttl);  /* id: when it was sent */
    if (s->stream_ready) lk_locks_session_ready(e);
}

static void grant(lk_engine *e)
{
    lk_buf body = {0};
    if (lk_etcd_grant_body(&body, e->cfg.ttl)) {
        lk_buf_free(&body);
        e->session.grant_retry_at = lk_now_ms() + BACKOFF_MAX_MS;  /* no memory */
        return;
    }
    e->session.grant_retry_at = 0;
    e->session.lease_req = lk_send(e, LK_PATH_GRANT, on_grant, e, &body, 0);
    if (e->session.lease_req) e->session.lease_req->id = (uint64_t)lk_now_ms();
    else e->session.grant_retry_at = lk_now_ms() + BACKOFF_MAX_MS;  /* no memory */
}

static void on_keepalive(lk_req *r)
{
    lk_engine *e = r->owner;
    lk_session *s = &e->session;
    s->lease_req = NULL;
    const char *code;
    char msg[LK_MSG_SIZE];
    cJSON *root = lk_answer(r, &code, msg, sizeof msg);
    if (!root) {
        if (strcmp(code, "lease_lost") == 0) {
            lk_session_lease_gone(e, msg);
        } else {  /* try again soon; jeopardy is declared by the tick */
            s->next_keepalive = lk_now_ms() + BACKOFF_MIN_MS * 5;
        }
        return;
    }
    const cJSON *result = cJSON_GetObjectItemCaseSensitive(root, "result");
    int64_t ttl = lk_etcd_int(result ? result : root, "TTL");
    cJSON_Delete(root);
    if (ttl <= 0) {  /* the gateway omits TTL: 0, the lease is gone */
        lk_session_lease_gone(e, "etcd says the session lease has expired");
        return;
    }
    confirmed(e, (int64_t)r->id, ttl);
}

static void keepalive(lk_engine *e)
{
    lk_buf body = {0};
    if (lk_etcd_lease_body(&body, e->session.lease)) {
        lk_buf_free(&body);
        return;
    }
    int64_t now = lk_now_ms();
    lk_count(&e->stats.keepalives);
    /* a renewal must not outlive the lease it renews */
    long limit = (long)renew_every_ms(e);
    lk_req *r = lk_send(e, LK_PATH_KEEPALIVE, on_keepalive, e, &body,
                        limit < e->cfg.timeout_ms ? limit : 0);
    if (r) r->id = (uint64_t)now;
    e->session.lease_req = r;
    e->session.next_keepalive = now + BACKOFF_MIN_MS * 5;
}

void lk_session_lease_gone(lk_engine *e, const char *why)
{
    lk_session *s = &e->session;
    if (!s->lease) return;
    s->lease = 0;
    __atomic_store_n(&e->lease_seen, 0, __ATOMIC_RELEASE);
    s->jeopardy = 0;
    if (s->lease_req) {
        lk_req_cancel(s->lease_req);
        s->lease_req = NULL;
    }
    lk_locks_lease_lost(e, why);
}

/* ---- the watch stream ---- */

static int on_stream_line(lk_req *r, const char *line, size_t n);
static void on_stream_done(lk_req *r);

static void open_stream(lk_engine *e)
{
    lk_session *s = &e->session;
    s->stream_retry_at = 0;
    s->stream_ready = 0;
    lk_req *r = lk_req_new(e->http, LK_PATH_WATCH, on_stream_done, e, 0);
    lk_bytes dir = {e->cfg.prefix, e->cfg.prefix_len};
    int64_t start = s->stream_rev ? s->stream_rev + 1 : 0;
    if (!r || lk_etcd_watch_body(&r->body, dir, start)) {  /* no memory */
        if (r) lk_buf_free(&r->body);
        free(r);
        s->stream_retry_at = lk_now_ms() + BACKOFF_MAX_MS;
        return;
    }
    r->on_line = on_stream_line;
    s->stream = lk_req_start(r) == 0 ? r : NULL;
    if (!s->stream) s->stream_retry_at = lk_now_ms() + BACKOFF_MAX_MS;  /* no memory */
    lk_count(&e->stats.requests);
    lk_count(&e->stats.stream_connects);
}

static int on_stream_line(lk_req *r, const char *line, size_t n)
{
    lk_engine *e = r->owner;
    lk_session *s = &e->session;
    cJSON *root = cJSON_ParseWithLength(line, n);
    const cJSON *res = cJSON_GetObjectItemCaseSensitive(root, "result");
    if (!cJSON_IsObject(res)) {  /* {"error": ...} or garbage: reconnect */
        cJSON_Delete(root);
        return -1;
    }
    int64_t header_rev = lk_etcd_revision(res);
    if (lk_etcd_int(res, "compact_revision") > 0) {
        /* we resumed from a compacted revision: start afresh, look again */
        s->stream_rev = 0;
        cJSON_Delete(root);
        lk_locks_resync(e);
        lk_watches_resync(e);
        return -1;
    }
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(res, "canceled"))) {
        cJSON_Delete(root);
        return -1;
    }
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(res, "created"))) {
        s->stream_ready = 1;
        s->stream_failures = 0;
        if (s->stream_rev == 0) s->stream_rev = header_rev;
        if (s->lease) lk_locks_session_ready(e);
        lk_watches_stream_ready(e);
    }
    const cJSON *events = cJSON_GetObjectItemCaseSensitive(res, "events");
    const cJSON *ev;
    lk_kv kv = {0};
    cJSON_ArrayForEach(ev, events) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(ev, "type");
        const cJSON *item = cJSON_GetObjectItemCaseSensitive(ev, "kv");
        if (lk_etcd_kv(item, &kv)) continue;
        lk_count(&e->stats.stream_events);
        if (kv.mod_rev > s->stream_rev) s->stream_rev = kv.mod_rev;
        /* keys are prefix NAME "/" ...: route by NAME */
        size_t plen = e->cfg.prefix_len;
        const char *name = kv.key.data + plen;
        const char *slash = kv.key.len > plen
                          ? memchr(name, '/', kv.key.len - plen) : NULL;
        if (!slash) continue;
        size_t name_len = (size_t)(slash - name);
        int deleted = cJSON_IsString(type) &&
                      strcmp(type->valuestring, "DELETE") == 0;
        if (deleted) lk_locks_deleted(e, name, name_len, kv.key.data, kv.key.len);
        lk_watches_changed(e, name, name_len, deleted, &kv);
    }
    lk_etcd_kv_free(&kv);
    cJSON_Delete(root);
    return 0;
}

static void on_stream_done(lk_req *r)
{
    lk_engine *e = r->owner;
    lk_session *s = &e->session;
    int was_ready = s->stream_ready;
    s->stream = NULL;
    s->stream_ready = 0;
    if (e->stopping) return;
    if (r->result == CURLE_ABORTED_BY_CALLBACK) {  /* our decision: at once */
        s->stream_retry_at = lk_now_ms();
        return;
    }
    s->stream_failures++;
    s->stream_retry_at = lk_now_ms() + backoff(s->stream_failures);
    if (!was_ready) {
        const char *code;
        char msg[LK_MSG_SIZE];
        cJSON_Delete(lk_answer(r, &code, msg, sizeof msg));
        if (!lk_req_transport_failed(r) && r->status == 200) {
            code = "unavailable";
            snprintf(msg, sizeof msg, "etcd at %s ended the watch stream",
                     lk_req_endpoint(r));
        }
        lk_locks_session_failed(e, code, msg);
    }
}

/* ---- life cycle ---- */

void lk_session_need(lk_engine *e)
{
    lk_session *s = &e->session;
    if (!s->lease && !s->lease_req && !s->grant_retry_at) grant(e);
    if (!s->stream && !s->stream_retry_at) open_stream(e);
}

void lk_session_need_stream(lk_engine *e)
{
    lk_session *s = &e->session;
    if (!s->stream && !s->stream_retry_at) open_stream(e);
}

int lk_session_ready(const lk_engine *e)
{
    return e->session.lease && e->session.stream_ready;
}

int64_t lk_session_tick(lk_engine *e, int64_t now)
{
    lk_session *s = &e->session;
    int wanted = e->locks != NULL || e->watches.count > 0;
    int64_t next = 0;
#define SOONER(t) do { if ((t) && (!next || (t) < next)) next = (t); } while (0)
    if (s->lease) {
        if (!s->jeopardy && now >= s->expires - jeopardy_margin_ms(e)) {
            s->jeopardy = 1;
            lk_locks_jeopardy(e);
        }
        if (!s->lease_req && now >= s->next_keepalive) keepalive(e);
        if (!s->lease_req) SOONER(s->next_keepalive);
        if (!s->jeopardy) SOONER(s->expires - jeopardy_margin_ms(e));
    } else if (s->grant_retry_at && !s->lease_req) {
        if (!wanted) s->grant_retry_at = 0;
        else if (now >= s->grant_retry_at) grant(e);
        else SOONER(s->grant_retry_at);
    }
    if (!s->stream && s->stream_retry_at) {
        if (!wanted) s->stream_retry_at = s->stream_rev = 0;
        else if (now >= s->stream_retry_at) open_stream(e);
        else SOONER(s->stream_retry_at);
    }
#undef SOONER
    return next;
}

static void on_revoke(lk_req *r)
{
    lk_engine *e = r->owner;
    e->session.revoke = NULL;
}

void lk_session_stop(lk_engine *e)
{
    lk_session *s = &e->session;
    if (s->lease_req) lk_req_cancel(s->lease_req);
    if (s->stream) lk_req_cancel(s->stream);
    s->lease_req = s->stream = NULL;
    if (!s->lease) return;
    lk_buf body = {0};
    if (lk_etcd_lease_body(&body, s->lease)) {
        lk_buf_free(&body);
        return;
    }
    s->lease = 0;
    s->revoke = lk_send(e, LK_PATH_REVOKE, on_revoke, e, &body,
                        e->cfg.timeout_ms > REVOKE_TIMEOUT_MS ? REVOKE_TIMEOUT_MS : 0);
}

int lk_session_busy(const lk_engine *e)
{
    return e->session.revoke != NULL;
}
