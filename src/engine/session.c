/* The session: the client's one lease (granted on first use, renewed every
 * TTL/3 with one POST each, revoked at close) and its one watch stream on the
 * client's prefix (resumed from the last revision seen after any drop).
 * It publishes through hooks (session.h) and calls nothing above it. */
#include "engine/session.h"

#include "engine/keys.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BACKOFF_MIN_MS 200   /* with jitter: at most ~10 attempts a second */
#define BACKOFF_MAX_MS 5000
#define KEEPALIVE_RETRY_MS 500
#define REVOKE_TIMEOUT_MS 2000
/* The stream must prove, every 0.6 trust while anything relies on it,
 * that it has missed nothing (see proven_at): any answer whose revision
 * the stream reaches does (on an idle etcd, every renewal); when none
 * comes, a read of the probe key (its revision), and when the stream is
 * behind that (etcd is busy elsewhere), a write to it on the session lease,
 * at most once every WRITE_EVERY_MS (writes cost etcd a disk sync), whose
 * event the stream must show within trust/4 of etcd confirming it. A
 * stream that does not is abandoned. Between writes, holders confirm
 * their keys with reads of their own (lock.c). */
#define PROVE_EVERY(s) (lk_session_trust_ms(s) * 3 / 5)
#define ECHO_MS(s) (lk_session_trust_ms(s) / 4 > 200 ? lk_session_trust_ms(s) / 4 : 200)
#define WRITE_EVERY_MS 5000

static int64_t backoff(int failures)
{
    return lk_backoff_ms(failures, BACKOFF_MIN_MS, BACKOFF_MAX_MS);
}

/* Keeps the cause of the last failure (for whoever waits, see
 * lk_session_failure); telling the hook is the caller's decision. */
static void note_failure(lk_session *s, lk_err code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void note_failure(lk_session *s, lk_err code, const char *fmt, ...)
{
    va_list ap;
    s->fail_code = code;
    va_start(ap, fmt);
    vsnprintf(s->fail_msg, sizeof s->fail_msg, fmt, ap);
    va_end(ap);
}

static void failure(lk_session *s, lk_err code, const char *msg)
{
    note_failure(s, code, "%s", msg);
    s->hooks.failed(s->hooks.ctx, code, msg);
}

lk_err lk_session_failure(const lk_session *s, const char **msg)
{
    *msg = s->fail_msg;
    return s->fail_code;
}

static int64_t renew_every_ms(const lk_session *s)
{
    return s->io->cfg.ttl * 1000 / 3;
}

static void store(int64_t *field, int64_t v)
{
    __atomic_store_n(field, v, __ATOMIC_RELEASE);
}

static void publish_stream(lk_session *s)
{
    store(&s->view.heard_at, s->proven_at);
    __atomic_store_n(&s->view.stream_up, s->stream_ready && !s->echo_due,
                     __ATOMIC_RELEASE);
}

static void publish(lk_session *s, int lost)
{
    store(&s->view.jeopardy_at, s->lease ? s->jeopardy_at : 0);
    store(&s->view.deadline, s->lease ? s->deadline : 0);
    store(&s->view.expires, s->lease ? s->expires : 0);
    __atomic_store_n(&s->view.lost, lost, __ATOMIC_RELEASE);
    store(&s->view.lease, s->lease);
}

void lk_session_view_read(const lk_session_view *v, lk_session_view *out)
{
    out->lease = __atomic_load_n(&v->lease, __ATOMIC_ACQUIRE);
    out->jeopardy_at = __atomic_load_n(&v->jeopardy_at, __ATOMIC_ACQUIRE);
    out->deadline = __atomic_load_n(&v->deadline, __ATOMIC_ACQUIRE);
    out->expires = __atomic_load_n(&v->expires, __ATOMIC_ACQUIRE);
    out->lost = __atomic_load_n(&v->lost, __ATOMIC_ACQUIRE);
    out->heard_at = __atomic_load_n(&v->heard_at, __ATOMIC_ACQUIRE);
    out->stream_up = __atomic_load_n(&v->stream_up, __ATOMIC_ACQUIRE);
    out->endpoint = __atomic_load_n(&v->endpoint, __ATOMIC_ACQUIRE);
}

static void on_keepalive(void *owner, const lk_renewal *r);

void lk_session_init(lk_session *s, lk_io *io, const lk_session_hooks *hooks)
{
    memset(s, 0, sizeof *s);
    s->io = io;
    s->hooks = *hooks;
    lk_lease_stream_open(&s->renewals, io, on_keepalive, s);
}

/* etcd confirmed that the lease lives for ttl seconds from sent_at (when
 * the request left): the only place the deadline moves on. */
/* The session-state gauge, and each entry into jeopardy counted. */
static void note_state(lk_session *s, int64_t now)
{
    lk_metrics *m = &s->io->metrics;
    int st = !s->lease ? (s->leased_once ? LK_SESSION_EXPIRED : LK_SESSION_NONE)
             : s->expired || now >= s->deadline ? LK_SESSION_EXPIRED
             : now >= s->jeopardy_at ? LK_SESSION_JEOPARDY : LK_SESSION_LIVE;
    if (st == s->metric_state) return;
    if (st == LK_SESSION_JEOPARDY) {
        lk_metric_add(&m->jeopardy, 1);
        lk_note(s->io, "jeopardy", NULL, "lease renewals are late: owned locks end at the deadline "
                "unless one comes");
    }
    s->metric_state = st;
    lk_metric_set(&m->session_state, st);
}

static void confirmed(lk_session *s, int64_t sent_at, int64_t ttl)
{
    if (ttl > s->io->cfg.ttl) ttl = s->io->cfg.ttl;  /* never trust more */
    s->expires = sent_at + ttl * 1000;
    s->deadline = s->expires - s->io->cfg.margin_ms;
    s->jeopardy_at = s->deadline - renew_every_ms(s);
    s->next_keepalive = lk_now_ms() + renew_every_ms(s);
    s->expired = 0;
    s->leased_once = 1;
    lk_metric_set(&s->io->metrics.lease_deadline_ms, s->deadline);
    note_state(s, lk_now_ms());
    publish(s, 0);
    s->hooks.renewed(s->hooks.ctx);
}

static void on_grant(lk_req *r)
{
    lk_session *s = r->owner;
    s->lease_req = NULL;
    lk_err code;
    char msg[LK_MSG_SIZE];
    lk_lease_resp lease;
    int answered = lk_answer_lease(r, &lease, &code, msg, sizeof msg) == 0;
    int64_t id = lease.id, ttl = lease.ttl;
    if (answered && (id == 0 || ttl <= 0)) {
        code = LK_ERR_PROTOCOL;
        snprintf(msg, sizeof msg, "lease grant answer without ID or TTL");
    }
    if (!answered || id == 0 || ttl <= 0) {
        s->grant_failures++;
        s->grant_retry_at = lk_now_ms() + backoff(s->grant_failures);
        failure(s, code, msg);
        return;
    }
    s->grant_failures = 0;
    s->fail_code = LK_OK;
    s->lease = id;
    confirmed(s, r->sent_at, ttl);
    if (s->stream_ready) s->hooks.ready(s->hooks.ctx);
}

static void grant(lk_session *s)
{
    s->grant_retry_at = 0;
    if (!(s->lease_req = lk_send_grant(s->io, s->io->cfg.ttl, on_grant, s))) {
        s->grant_retry_at = lk_now_ms() + BACKOFF_MAX_MS;  /* no memory */
    }
}

/* A renewal's answer, from the keepalive flow. */
static void on_keepalive(void *owner, const lk_renewal *r)
{
    lk_session *s = owner;
    lk_metrics *m = &s->io->metrics;
    if (!r->ok) lk_metric_add(&m->renewals_failed, 1);
    else {
        lk_hist_observe(&m->keepalive_seconds, r->rtt_us);
        /* answered after the point where owners stop being confirmed */
        if (lk_now_ms() >= s->jeopardy_at) {
            lk_metric_add(&m->renewals_late, 1);
            lk_note(s->io, "renewed_late", r->endpoint, "a lease renewal came after its owners' "
                    "confirmation ran out");
        }
    }
    if (!r->ok) {
        if (r->code == LK_ERR_LEASE_LOST)
            lk_session_lease_gone(s, r->msg);
        else  /* try again soon; the tick ends ownership at the deadline */
            s->next_keepalive = lk_now_ms() + KEEPALIVE_RETRY_MS;
        return;
    }
    int64_t ttl = r->resp.ttl;
    if (ttl <= 0) {  /* etcd omits TTL: 0, the lease is gone */
        lk_session_lease_gone(s, "etcd says the session lease has expired");
        return;
    }
    confirmed(s, r->sent_at, ttl);
}

/* A grant or a renewal on its way. */
static int lease_busy(const lk_session *s)
{
    return s->lease_req || lk_lease_stream_waiting(&s->renewals);
}

static void keepalive(lk_session *s)
{
    s->next_keepalive = lk_now_ms() + KEEPALIVE_RETRY_MS;
    lk_count(&s->io->stats.keepalives);
    lk_metric_add(&s->io->metrics.renewals_sent, 1);
    /* a renewal must not outlive the lease it renews */
    int64_t limit = renew_every_ms(s);
    lk_lease_stream_send(&s->renewals, s->lease, limit < s->io->cfg.timeout_ms ? limit : 0);
}

void lk_session_lease_gone(lk_session *s, const char *why)
{
    if (!s->lease) return;
    s->lease = 0;
    s->expired = 0;
    lk_metric_set(&s->io->metrics.lease_deadline_ms, 0);
    note_state(s, lk_now_ms());
    publish(s, 1);
    if (s->lease_req) {
        lk_req_cancel(s->lease_req);
        s->lease_req = NULL;
    }
    lk_lease_stream_close(&s->renewals);
    s->hooks.lease_lost(s->hooks.ctx, why);
}

/* ---- the watch stream ---- */

static int on_stream_line(lk_req *r, const char *line, size_t n);
static void on_stream_done(lk_req *r);

static void open_stream(lk_session *s)
{
    lk_io *io = s->io;
    s->stream_retry_at = 0;
    s->stream_ready = s->stream_progress = s->stream_resync = s->stream_refused = 0;
    s->echo_due = 0;
    s->opened_at = lk_now_ms();
    lk_watch_req q = {
        .key = {io->cfg.prefix, io->cfg.prefix_len},
        .prefix = 1,
        .start_rev = s->stream_rev && s->stream_rev < INT64_MAX ? s->stream_rev + 1 : 0,
    };
    s->stream = lk_open_watch(io, &q, on_stream_line, on_stream_done, s);
    if (!s->stream) {  /* no memory */
        s->stream_retry_at = lk_now_ms() + BACKOFF_MAX_MS;
        return;
    }
    lk_count(&io->stats.stream_connects);
}

/* ---- proofs that the stream is complete ---- */

/* The stream has shown every event up to etcd's state at time at. */
static void proven(lk_session *s, int64_t at)
{
    if (at <= s->proven_at) return;
    s->proven_at = at;
    if (s->probe && s->probe->sent_at <= at) {  /* it is answered already */
        lk_req_cancel(s->probe);
        s->probe = NULL;
    }
    if (s->echo_due) s->echo_due = 0;
    publish_stream(s);
    s->hooks.proven(s->hooks.ctx);
}

/* The unproven answers that the stream has now reached become proofs. */
static void settle(lk_session *s)
{
    lk_proof *first = &s->pending[0], *last = &s->pending[1];
    if (last->at && last->rev <= s->stream_rev) {
        proven(s, last->at);
        *first = *last = (lk_proof){0, 0};
    } else if (first->at && first->rev <= s->stream_rev) {
        proven(s, first->at);
        *first = *last;
        *last = (lk_proof){0, 0};
    }
}

/* Takes io's newest answer as a proof to come (or one at once, when the
 * stream is past its revision already: nothing changed since). */
static void sample(lk_session *s)
{
    lk_io *io = s->io;
    if (io->answer_at <= s->sampled_at) return;
    s->sampled_at = io->answer_at;
    lk_proof p = {io->answer_rev, io->answer_at};
    if (p.at <= s->proven_at) return;
    if (!s->pending[0].at) s->pending[0] = p;
    else s->pending[1] = p;
    settle(s);
}

/* The stream showed events or progress up to rev. */
static void reached(lk_session *s, int64_t rev)
{
    if (rev > s->stream_rev) s->stream_rev = rev;
    sample(s);
    settle(s);
}

/* Hands one stream event on, with the lock name its key belongs to (the
 * probe key has none). */
static void publish_change(lk_session *s, const lk_watch_event *ev)
{
    const lk_kv *kv = &ev->kv;
    lk_bytes name, key = {kv->key.data, kv->key.len};
    int marker = 0;
    if (!lk_key_name(key, s->io->cfg.prefix_len, &name) &&
        !(marker = lk_key_released_name(key, s->io->cfg.prefix_len, &name)))
        return;
    lk_change c = {
        .name = name.p,
        .name_len = name.n,
        .marker = marker,
        .deleted = ev->deleted,
        .kv = kv,
    };
    s->hooks.change(s->hooks.ctx, &c);
}

/* A line that is not a watch result (etcd's error, an HTTP 500's body,
 * say), or a malformed one: kept as the stream's failure; the stream ends. */
static int stream_error(lk_session *s, int rc, int grpc, const char *text, const lk_req *r)
{
    if (lk_auth_token_refused(text)) lk_auth_rejected(s->io->auth, r->auth_gen);
    note_failure(s, rc == LK_STREAM_MALFORMED ? LK_ERR_PROTOCOL
                    : grpc == 14 ? LK_ERR_UNAVAILABLE : lk_auth_refusal(grpc, text) ? LK_ERR_AUTH
                    : grpc >= 0 ? LK_ERR_ETCD : LK_ERR_PROTOCOL,
                 "watch stream at %s: %s", lk_req_endpoint(r), text);
    s->stream_refused = 1;
    return -1;
}

static int on_stream_line(lk_req *r, const char *line, size_t n)
{
    lk_session *s = r->owner;
    lk_metric_set(&s->io->metrics.stream_message_ms, lk_now_ms());
    lk_watch_resp msg;
    int grpc;
    char text[LK_MSG_SIZE - 128];
    int rc = lk_stream_message(r, line, n, &msg, text, sizeof text, &grpc);
    if (rc != LK_STREAM_OK) return stream_error(s, rc, grpc, text, r);
    int64_t header_rev = msg.revision;
    if (msg.compact_revision > 0) {
        /* we resumed from a compacted revision: start afresh, look again;
         * answers from before the gap prove nothing about it */
        s->stream_rev = 0;
        s->stream_resync = 1;
        s->pending[0] = s->pending[1] = (lk_proof){0, 0};
        s->sampled_at = lk_now_ms();
        lk_watch_resp_free(&msg);
        lk_metric_add(&s->io->metrics.resyncs, 1);
        lk_note(s->io, "resync", lk_req_endpoint(r), "the watch stream resumed into compacted history: "
                "re-reading");
        s->hooks.resync(s->hooks.ctx);
        return -1;
    }
    if (msg.canceled) {
        const char *reason = msg.cancel_reason[0] ? msg.cancel_reason : "no reason given";
        /* an expired token: the next stream waits for a new one */
        if (lk_auth_token_refused(reason)) lk_auth_rejected(s->io->auth, r->auth_gen);
        note_failure(s, lk_auth_refusal(-1, reason) ? LK_ERR_AUTH : LK_ERR_ETCD,
                     "etcd at %s canceled the watch: %.200s", lk_req_endpoint(r), reason);
        s->stream_refused = 1;
        lk_watch_resp_free(&msg);
        return -1;
    }
    if (!msg.created && !s->stream_ready) {
        /* a stream begins with its creation: one whose first message was
         * lost (a proxy that swallowed it) may have lost the events etcd
         * sent from our resume point too. Nothing from it counts */
        lk_watch_resp_free(&msg);
        note_failure(s, LK_ERR_UNAVAILABLE, "watch stream at %s: a message came before the watch "
                     "was confirmed (its start was lost on the way)", lk_req_endpoint(r));
        s->ended_why = LK_RECONNECT_SILENT;
        return -1;
    }
    if (msg.created) {
        s->stream_ready = 1;
        s->fail_code = LK_OK;
        if (s->stream_rev == 0) s->stream_rev = header_rev;
        publish_stream(s);
        if (s->lease) s->hooks.ready(s->hooks.ctx);
        s->hooks.stream_ready(s->hooks.ctx);
    } else if (msg.n == 0) {  /* a progress note: nothing up to header_rev missed */
        s->stream_progress = 1;
        reached(s, header_rev);
    }
    int64_t top = 0;
    for (size_t i = 0; i < msg.n; i++) {
        lk_count(&s->io->stats.stream_events);
        s->stream_progress = 1;
        publish_change(s, &msg.events[i]);
        if (msg.events[i].kv.mod_rev > top) top = msg.events[i].kv.mod_rev;
    }
    /* after every change of the batch: a deletion is handled before the
     * stream counts as having shown it */
    if (top) reached(s, top);
    lk_watch_resp_free(&msg);
    return 0;
}

/* The stream is over (etcd or the network ended it, or we did). */
static void stream_ended(lk_session *s, int endpoint_fault, int endpoint)
{
    int was_ready = s->stream_ready;
    int why = s->stream_resync ? -1 : s->stream_refused ? LK_RECONNECT_REFUSED : s->ended_why;
    s->ended_why = LK_RECONNECT_ENDED;
    if (why >= 0) {
        lk_metric_add(&s->io->metrics.reconnects[why], 1);
        lk_note(s->io, "reconnect",
                endpoint >= 0 && endpoint < s->io->cfg.n_endpoints ? s->io->cfg.endpoints[endpoint] : NULL,
                lk_reconnect_name((lk_reconnect_reason)why));
    }
    s->stream = NULL;
    s->stream_ready = 0;
    s->echo_due = 0;
    publish_stream(s);
    if (s->stream_resync) {  /* our decision, to start afresh: at once */
        s->stream_retry_at = lk_now_ms();
        return;
    }
    if (endpoint_fault) lk_http_endpoint_failed(s->io->http, endpoint);
    /* backoff grows until a stream shows real progress (created alone is
     * not: a watch canceled at once must not reconnect in a tight loop) */
    s->stream_failures = s->stream_progress ? 1 : s->stream_failures + 1;
    s->stream_retry_at = lk_now_ms() + backoff(s->stream_failures);
    /* a stream that never got going on any member, or that etcd refused
     * with a reason, is news for whoever waits for the session; a drop is
     * not (it comes back by itself), nor one member's fault while another
     * is left to try */
    if ((!was_ready && s->stream_failures >= s->io->cfg.n_endpoints) ||
        s->stream_refused) {
        const char *msg;
        lk_err code = lk_session_failure(s, &msg);
        if (code) s->hooks.failed(s->hooks.ctx, code, msg);
    }
}

static void on_stream_done(lk_req *r)
{
    lk_session *s = r->owner;
    lk_err code = LK_OK;
    char msg[LK_MSG_SIZE];
    int ours = lk_stream_end(r, &code, msg, sizeof msg);
    if (!ours && !s->fail_code) note_failure(s, code, "%s", msg);
    /* an error line or a cancel: try another member (the transport's own
     * faults were counted by http already) */
    stream_ended(s, ours && !s->stream_resync, r->endpoint);
}

/* ---- asking the stream to prove itself ---- */

static void send_probe(lk_session *s, int write);

static void on_probe(lk_req *r)
{
    lk_session *s = r->owner;
    int write = s->probe_write;
    s->probe = NULL;
    lk_err code;
    char msg[LK_MSG_SIZE];
    int answered = lk_answer_ok(r, &code, msg, sizeof msg) == 0;  /* noted in io */
    int64_t now = lk_now_ms();
    if (!answered) {  /* no proof either way: ask again soon */
        if (code == LK_ERR_LEASE_LOST) lk_session_lease_gone(s, msg);
        s->probe_failures++;
        s->next_probe_at = now + lk_backoff_ms(s->probe_failures, BACKOFF_MIN_MS,
                                               PROVE_EVERY(s));
        return;
    }
    s->probe_failures = 0;
    sample(s);
    if (s->proven_at >= r->sent_at) return;  /* nothing changed since */
    if (!write) send_probe(s, 1);             /* the stream is behind: a write */
    else if (s->stream_ready) {               /* its event is due */
        s->echo_due = now + ECHO_MS(s);
        publish_stream(s);
    }
}

/* A read of the probe key (its revision), or a write to it on the session
 * lease: the key sits outside every lock's range (no name is empty) and
 * goes with the lease. */
static void send_probe(lk_session *s, int write)
{
    lk_io *io = s->io;
    int64_t now = lk_now_ms();
    if (write && (!s->lease || !s->stream_ready)) {
        lk_session_need(s);  /* a write needs the lease; it is shown by a stream */
        s->next_probe_at = now + PROVE_EVERY(s) / 4;
        return;
    }
    if (write && s->written_at && now < s->written_at + WRITE_EVERY_MS) {
        s->next_probe_at = s->written_at + WRITE_EVERY_MS;  /* reads wait too */
        return;
    }
    if (write) s->written_at = now;
    lk_buf key = {0};
    s->probe_write = write;
    s->probe = NULL;
    if (!lk_key_probe(&key, (lk_bytes){io->cfg.prefix, io->cfg.prefix_len})) {
        lk_bytes k = {key.data, key.len};
        lk_put_req put = {k, {"", 0}, s->lease};
        lk_range_req count = lk_recipe_count(k);
        s->probe = write ? lk_send_put(io, &put, on_probe, s, 0, 1)
                         : lk_send_range(io, &count, on_probe, s, 0, 1);
    }
    lk_buf_free(&key);
    if (!s->probe) {
        s->next_probe_at = now + BACKOFF_MAX_MS;  /* no memory */
    }
}

/* Whether the stream must be given up, and why: it was not created in
 * time, it did not show a write it owed, or requests left its member. */
static const char *stream_doubtful(const lk_session *s, int64_t now, int *fault)
{
    const lk_req *r = s->stream;
    *fault = 1;
    if (!s->stream_ready && now >= s->opened_at + s->io->cfg.timeout_ms)
        return "etcd did not confirm the watch stream in time";
    if (s->echo_due && now >= s->echo_due)
        return "the watch stream went silent";
    *fault = 0;
    if (lk_http_current_index(s->io->http) != r->endpoint &&
        lk_http_endpoint_resting(s->io->http, r->endpoint))
        return "requests failed over to another member";
    return NULL;
}

/* Plans the next proof: when the last one is getting old, a read. */
static int64_t prove(lk_session *s, int64_t now)
{
    if (s->probe) return 0;
    if (s->echo_due) return s->echo_due;
    int64_t due = s->proven_at + PROVE_EVERY(s);
    if (s->next_probe_at > due) due = s->next_probe_at;
    if (now < due) return due;
    send_probe(s, 0);
    return s->probe ? 0 : now + PROVE_EVERY(s);
}

/* ---- life cycle ---- */

void lk_session_need(lk_session *s)
{
    if (!s->lease && !lease_busy(s) && !s->grant_retry_at) grant(s);
    lk_session_need_stream(s);
}

void lk_session_need_stream(lk_session *s)
{
    if (!s->stream && !s->stream_retry_at) open_stream(s);
}

int lk_session_ready(const lk_session *s)
{
    return s->lease && s->stream_ready;
}

int lk_session_confirmed(const lk_session *s, int64_t now)
{
    return s->lease && now < s->jeopardy_at;
}

int64_t lk_session_trust_ms(const lk_session *s)
{
    return s->io->cfg.timeout_ms + s->io->cfg.margin_ms / 2;
}

int64_t lk_session_tick(lk_session *s, int64_t now)
{
    int wanted = s->hooks.wanted(s->hooks.ctx);
    int64_t next = 0;
#define SOONER(t) do { if ((t) && (!next || (t) < next)) next = (t); } while (0)
    if (s->lease) SOONER(lk_lease_stream_check(&s->renewals, now));
    if (s->lease) {
        if (!s->expired && now >= s->deadline) {
            s->expired = 1;
            s->hooks.expired(s->hooks.ctx);
        }
        if (s->lease && !lease_busy(s) && now >= s->next_keepalive) keepalive(s);
        if (s->lease && !lease_busy(s)) SOONER(s->next_keepalive);
        if (s->lease && !s->expired) SOONER(s->deadline);
        if (s->lease && now < s->jeopardy_at) SOONER(s->jeopardy_at);  /* the gauge */
    } else if (s->grant_retry_at && !lease_busy(s)) {
        if (!wanted) s->grant_retry_at = 0;
        else if (now >= s->grant_retry_at) grant(s);
        else SOONER(s->grant_retry_at);
    }
    sample(s);
    int fault;
    const char *why = s->stream ? stream_doubtful(s, now, &fault) : NULL;
    if (why) {  /* elsewhere, at once */
        lk_req *r = s->stream;
        int endpoint = r->endpoint;
        note_failure(s, LK_ERR_UNAVAILABLE, "%s (%s)", why, lk_req_endpoint(r));
        s->ended_why = !fault ? LK_RECONNECT_FAILOVER
                       : s->stream_ready ? LK_RECONNECT_SILENT : LK_RECONNECT_REFUSED;
        lk_req_cancel(r);
        stream_ended(s, fault, endpoint);
        s->stream_retry_at = now;
    } else if (s->stream && !s->stream_ready) {
        SOONER(s->opened_at + s->io->cfg.timeout_ms);
    }
    if (wanted) SOONER(prove(s, now));
    if (!s->stream && s->stream_retry_at) {
        if (!wanted) s->stream_retry_at = s->stream_rev = 0;
        else if (now >= s->stream_retry_at) open_stream(s);
        else SOONER(s->stream_retry_at);
    }
    __atomic_store_n(&s->view.endpoint, lk_http_current_index(s->io->http),
                     __ATOMIC_RELEASE);
    note_state(s, now);
#undef SOONER
    return next;
}

static void on_revoke(lk_req *r)
{
    lk_session *s = r->owner;
    s->revoke = NULL;
}

void lk_session_stop(lk_session *s)
{
    if (s->lease_req) lk_req_cancel(s->lease_req);
    lk_lease_stream_close(&s->renewals);
    if (s->stream) lk_req_cancel(s->stream);
    if (s->probe) lk_req_cancel(s->probe);
    s->lease_req = s->stream = s->probe = NULL;
    if (!s->lease) return;
    int64_t lease = s->lease;
    s->lease = 0;
    publish(s, 0);
    s->revoke = lk_send_revoke(s->io, lease, on_revoke, s,
                               s->io->cfg.timeout_ms > REVOKE_TIMEOUT_MS ? REVOKE_TIMEOUT_MS : 0);
}

int lk_session_busy(const lk_session *s)
{
    return s->revoke != NULL;
}
