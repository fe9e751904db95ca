/* Locks (see lock.h). The invariant they keep, checked in one place
 * (publish) on every path that grants, keeps or reads ownership:
 *
 *   owned  <=>  etcd showed this lock's own key first (holds), on the
 *               session's current lease, now < the lease's deadline, and
 *               now < the key's last confirmation + the session's trust
 *               time; a new owner is told only while renewals are on time.
 *
 * A key is confirmed by an answer that shows it (as of the moment it was
 * sent), or by the stream's proof that it missed no event until a later
 * moment (lk_session.proven_at): renewing the lease confirms the lease,
 * never the keys. When the stream's proofs are late, a holder reads its
 * own key.
 *
 * The deadline goes out with the lock's ownership view, so lock:owned() compares
 * it with the clock when asked, whatever this thread is doing.
 * Events are ordered by revision: a change older than the state it would
 * touch is ignored, and a lock's requests are serialized (a write in
 * flight is never abandoned, so a delete can never overtake it). */
#include "engine/lock.h"

#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/keys.h"

#define RETRY_MIN_MS 100
#define RETRY_MAX_MS 2000
/* A request capped at the caller's bound may end a little before it by our
 * clock (libcurl keeps its own clock and rounds its timers; CI saw one end
 * early): a failure this close to the bound ran out of the caller's time,
 * and says 'timeout', not the transport's word. */
#define BOUND_SLACK_MS 50

typedef enum {
    LS_QUEUED,     /* behind another lock of this client on the same name */
    LS_SESSION,    /* waiting for the lease and the watch stream */
    LS_CLEANUP,    /* waiting for a stray key of ours on the name to go */
    LS_ACQUIRE,    /* put + owner txn in flight */
    LS_CHECK,      /* predecessor + own key txn in flight */
    LS_WAITING,    /* waiting for the predecessor's deletion */
    LS_DELAYED,    /* first, but the predecessor vanished without a clean
                      release: owns after the lock-delay (a check then) */
    LS_HELD,       /* etcd showed our key first; nothing in flight */
    LS_RETRY,      /* a request failed; acquire again at retry_at */
    LS_DELETE      /* deleting the own key; then the lock is over */
} lock_state;

struct lk_lock {
    lk_locks *ls;
    uint64_t id;
    lock_state state;
    lk_buf name, dir, key, value;
    int64_t asked_us;       /* when lock() asked (the acquire-wait metric) */
    int waiting;            /* counted in the locks-waiting gauge */
    int64_t lease;          /* lease the key was written on; 0: no key */
    int64_t my_rev;         /* the key's create_revision: the token */
    lk_buf pred;            /* the key we wait to see deleted */
    int limit;              /* a semaphore's N (owners at once); 1: a lock */
    lk_buf limit_key;       /* semaphore: prefix/limit/NAME/hex(lease) */
    lk_buf limit_dir;       /* prefix/limit/NAME/ */
    lk_map before;          /* semaphore, waiting: the keys older than ours
                               as of the last check (values: (void *)1) */
    int pred_clean;         /* the stream showed pred's clean release */
    int delay_served;       /* the lock-delay ran out: the next check owns */
    int64_t delay_until;    /* LS_DELAYED */
    int mark_release;       /* release() of an owned lock: mark it clean */
    int wait, keep;
    int background;         /* keeps trying even when etcd is unreachable */
    int64_t deadline;       /* for the first acquisition; 0: none */
    int64_t retry_at;       /* LS_RETRY, LS_DELETE after a failure */
    int failures;           /* requests failed in a row (backoff) */
    int reported;           /* lock() has its answer */
    int holds;              /* etcd showed our key first, nothing since
                               says otherwise */
    int64_t until;          /* published: owned until then; 0: not owned */
    int64_t confirmed_at;   /* send time of the last answer showing the key */
    int64_t answer_sent;    /* send time of the answer being read */
    int64_t seen_rev;       /* newest deletion under dir seen while a
                               request was in flight */
    int resync;             /* the stream had a gap: check once it is back */
    uint64_t release_id;    /* release() waiting for the delete */
    lk_ownership *ownership;
    lk_req *req;            /* at most one request at a time */
    lk_lock *prev, *next;   /* every lock */
    lk_lock *queued;        /* next lock of this client on the same name */
};

static void start_acquire(lk_locks *ls, lk_lock *l);
static void start_delete(lk_locks *ls, lk_lock *l);
static void check(lk_locks *ls, lk_lock *l);

static void wake_at(lk_locks *ls, int64_t t)
{
    if (!ls->tick_at || t < ls->tick_at) ls->tick_at = t;
}

static int show_len(const lk_lock *l)
{
    return l->name.len > 80 ? 80 : (int)l->name.len;
}

static lk_bytes bytes(const lk_buf *b)
{
    return (lk_bytes){b->data, b->len};
}

static int same(const lk_buf *b, const char *p, size_t n)
{
    return b->len == n && memcmp(b->data, p, n) == 0;
}

/* The lock's key goes with the news that it is owned (lock:key()); NULL
 * when out of memory (the news goes without it). */
static void attach_key(lk_event *ev, const lk_lock *l)
{
    if ((ev->key = malloc(l->key.len + 1))) {
        memcpy(ev->key, l->key.data ? l->key.data : "", l->key.len);
        ev->key[l->key.len] = '\0';
        ev->key_len = l->key.len;
    }
}

/* lock() is answered, or the lock is over: it waits no more. */
static void stop_waiting(lk_locks *ls, lk_lock *l)
{
    if (!l->waiting) return;
    l->waiting = 0;
    lk_metric_add(&ls->io->metrics.locks_waiting, -1);
}

static void report_ok(lk_locks *ls, lk_lock *l)
{
    if (l->reported) return;
    l->reported = 1;
    stop_waiting(ls, l);
    lk_hist_observe(&ls->io->metrics.acquire_seconds, lk_now_us() - l->asked_us);
    l->deadline = 0;
    lk_event *ev = lk_event_new(LK_EV_RESULT, l->id);
    if (!ev) return;
    ev->ok = 1;
    ev->token = l->my_rev;
    attach_key(ev, l);
    lk_emit(ls->io, ev);
}

static void report_fail(lk_locks *ls, lk_lock *l, lk_err code,
                        const char *why)
{
    if (l->reported) return;
    l->reported = 1;
    l->deadline = 0;
    stop_waiting(ls, l);
    lk_emit_fail(ls->io, l->id, code, "lock '%.*s': %s", show_len(l),
                 l->name.data, why);
}

/* When the lock's key was last known to exist: an answer that showed it,
 * or the stream's proof since (not across a gap in the stream: resync). */
static int64_t key_confirmed(const lk_locks *ls, const lk_lock *l)
{
    int64_t at = l->confirmed_at, proven = ls->session->proven_at;
    return !l->resync && proven > at ? proven : at;
}

/* When a holder reads its own key, unless the stream proves it first. */
static int64_t read_key_at(const lk_locks *ls, const lk_lock *l)
{
    return key_confirmed(ls, l) + lk_session_trust_ms(ls->session) * 7 / 10;
}

/* The one place ownership is decided and published (see the top). A lock
 * that stops being owned says why through code and why (LK_OK, NULL: quietly,
 * as on release). The first grant answers lock(). */
static void publish(lk_locks *ls, lk_lock *l, lk_err code, const char *why)
{
    const lk_session *s = ls->session;
    int64_t now = lk_now_ms();
    int64_t until = 0;
    int64_t key_until = key_confirmed(ls, l) + lk_session_trust_ms(s);
    int64_t limit = key_until < s->deadline ? key_until : s->deadline;
    if (l->holds && l->lease && l->lease == s->lease && !s->expired &&
        now < limit && (l->until || lk_session_confirmed(s, now)))
        until = limit;
    int was = l->until != 0;
    l->until = until;
    lk_ownership_set(l->ownership, until, l->my_rev);
    if (until) wake_at(ls, read_key_at(ls, l));  /* the tick reads the key then */
    if (was == (until != 0)) return;
    lk_metrics *m = &ls->io->metrics;
    lk_metric_add(&m->locks_held, until ? 1 : -1);
    if (until) lk_metric_add(&m->acquisitions, 1);
    else if (code > 0 && code < LK_ERR_COUNT) lk_metric_add(&m->losses[code], 1);
    else lk_metric_add(&m->releases, 1);
    lk_event *ev = lk_event_new(LK_EV_OWNED, l->id);
    if (ev) {
        ev->owned = until != 0;
        ev->token = l->my_rev;
        if (until) attach_key(ev, l);
        if (!until && code) {
            char msg[LK_MSG_SIZE];
            snprintf(msg, sizeof msg, "lock '%.*s': %s", show_len(l),
                     l->name.data, why);
            ev->code = code;
            ev->msg = strdup(msg);
        }
        lk_emit(ls->io, ev);
    }
    if (until) report_ok(ls, l);
}

/* etcd shows our key first: owned, if the session allows (else the lock
 * waits, holding, for a renewal to confirm it). */
static void became_owner(lk_locks *ls, lk_lock *l)
{
    l->pred_clean = l->delay_served = 0;
    l->state = LS_HELD;
    l->holds = 1;
    l->confirmed_at = l->answer_sent;
    publish(ls, l, LK_OK, NULL);
}

/* Ownership ends (holds = 0) and is published as ended. */
static void drop(lk_locks *ls, lk_lock *l, lk_err code, const char *why)
{
    l->holds = 0;
    publish(ls, l, code, why);
}

static void cancel_req(lk_lock *l)
{
    if (l->req) lk_req_cancel(l->req);
    l->req = NULL;
}

static void free_lock(lk_lock *l)
{
    lk_buf_free(&l->name);
    lk_buf_free(&l->dir);
    lk_buf_free(&l->key);
    lk_buf_free(&l->value);
    lk_buf_free(&l->pred);
    lk_buf_free(&l->limit_key);
    lk_buf_free(&l->limit_dir);
    lk_map_free(&l->before);
    lk_ownership_unref(l->ownership);
    free(l);
}

/* The lock is over: frees it and lets the next local lock on its name go. */
static void finish(lk_locks *ls, lk_lock *l)
{
    cancel_req(l);
    drop(ls, l, LK_OK, NULL);
    stop_waiting(ls, l);
    if (l->release_id) lk_emit_ok(ls->io, l->release_id);
    uint64_t id = l->id;
    lk_map_del(&ls->by_id, &id, sizeof id);
    if (l->prev) l->prev->next = l->next;
    else ls->all = l->next;
    if (l->next) l->next->prev = l->prev;
    lk_lock *head = lk_map_get(&ls->by_name, l->name.data, l->name.len);
    if (head == l) {
        if (l->queued && !ls->stopping) {
            lk_map_put(&ls->by_name, l->name.data, l->name.len, l->queued);
            start_acquire(ls, l->queued);
        } else {
            lk_map_del(&ls->by_name, l->name.data, l->name.len);
        }
    } else {  /* queued behind another */
        for (lk_lock *p = head; p; p = p->queued)
            if (p->queued == l) {
                p->queued = l->queued;
                break;
            }
    }
    free_lock(l);
}

/* Our key is gone or not ours any more (deleted by someone, or vanished
 * while we waited). Whatever is left of it is deleted. */
static void lost_key(lk_locks *ls, lk_lock *l, const char *why)
{
    drop(ls, l, LK_ERR_LOST, why);
    if (l->keep) {
        start_acquire(ls, l);
        return;
    }
    report_fail(ls, l, LK_ERR_LOST, why);
    start_delete(ls, l);
}

/* Plans the next try of a failed request, with backoff. */
static void retry_later(lk_locks *ls, lk_lock *l)
{
    l->failures++;
    l->retry_at = lk_now_ms() + lk_backoff_ms(l->failures, RETRY_MIN_MS, RETRY_MAX_MS);
    wake_at(ls, l->retry_at);
}

/* A request of this lock failed without etcd deciding anything. */
static void transient(lk_locks *ls, lk_lock *l, lk_err code,
                      const char *msg)
{
    if (code == LK_ERR_LEASE_LOST) {
        lk_session_lease_gone(ls->session, msg);  /* reaches this lock too */
        return;
    }
    if (!l->reported && l->deadline && lk_now_ms() + BOUND_SLACK_MS >= l->deadline) {
        char both[LK_MSG_SIZE];  /* its own bound ran out: that is the news */
        snprintf(both, sizeof both, "timed out waiting for the lock (%.400s)", msg);
        report_fail(ls, l, LK_ERR_TIMEOUT, both);
        l->keep = 0;
        start_delete(ls, l);
        return;
    }
    if (!l->reported && !l->keep) {
        const char *why;
        if (lk_session_failure(ls->session, &why)) {  /* say what else is known */
            char both[LK_MSG_SIZE];
            snprintf(both, sizeof both, "%.300s (and %.180s)", msg, why);
            report_fail(ls, l, code, both);
        } else {
            report_fail(ls, l, code, msg);
        }
        start_delete(ls, l);  /* the put may have landed */
        return;
    }
    l->state = LS_RETRY;
    retry_later(ls, l);
}

/* Whether a key-value's key equals b. */
static int key_is(const lk_kv *kv, const lk_buf *b)
{
    return kv && same(b, kv->key.data, kv->key.len);
}

/* A lock request's answer (a txn): 0 and *t (its revision > 0), or -1 once
 * the lock has moved on (a delete was asked for meanwhile, or the failure
 * went to transient()). */
static int lock_answer(lk_req *r, lk_txn_resp *t)
{
    lk_lock *l = r->owner;
    lk_locks *ls = l->ls;
    l->req = NULL;
    l->answer_sent = r->sent_at;
    if (l->deadline && !l->reported) wake_at(ls, l->deadline);
    if (l->state == LS_DELETE) {  /* release or timeout came meanwhile */
        start_delete(ls, l);
        return -1;
    }
    lk_err code;
    char msg[LK_MSG_SIZE];
    if (lk_answer_txn(r, t, &code, msg, sizeof msg)) {
        transient(ls, l, code, msg);
        return -1;
    }
    if (t->revision <= 0) {
        lk_txn_resp_free(t);
        transient(ls, l, LK_ERR_PROTOCOL, "etcd's answer has no header revision");
        return -1;
    }
    l->failures = 0;
    return 0;
}

/* A request for a lock that lock() still waits for gets only the time the
 * caller left it (0: the client's request timeout). */
static int64_t time_left(const lk_locks *ls, const lk_lock *l)
{
    if (!l->deadline || l->reported) return 0;
    int64_t left = l->deadline - lk_now_ms();
    if (left >= ls->io->cfg.timeout_ms) return 0;
    return left > 1 ? left : 1;
}

/* Sends the lock's next txn (NULL: the caller ran out of memory building
 * what it needs), and enters state. */
static void send_txn(lk_locks *ls, lk_lock *l, const lk_txn_req *txn,
                     lock_state state, lk_req_done_fn done)
{
    if (!txn) {
        transient(ls, l, LK_ERR_NOMEM, "out of memory");
        return;
    }
    l->state = state;
    l->seen_rev = 0;  /* the answer will reflect every change seen so far */
    l->req = lk_send_txn(ls->io, txn, done, l, time_left(ls, l));
    if (!l->req) transient(ls, l, LK_ERR_NOMEM, "could not start a request");
    /* lock() bounds its own wait (lk_locks_tick): a burst of locks that
     * waits for a free connection is not etcd being unreachable */
    else if (!l->reported) lk_req_patient(l->req);
}

static void on_set(lk_req *r);

/* Puts the lock's current value into its key, guarded by its token: for
 * set() (answering command id), or for a key that an earlier try left
 * behind with an older value (id 0). A failed guard ends the lock. */
static lk_req *guarded_put(lk_locks *ls, lk_lock *l, uint64_t id)
{
    lk_txn_build b;
    lk_req *r = lk_send_txn(ls->io, lk_recipe_set(&b, bytes(&l->key), bytes(&l->value), l->lease,
                                                  l->my_rev), on_set, ls, 0);
    if (!r) return NULL;
    r->id = id;
    r->tag = l->id;
    r->tag_rev = l->my_rev;
    return r;
}

static void refresh_value(lk_locks *ls, lk_lock *l)
{
    guarded_put(ls, l, 0);  /* best effort */
}

/* Whether an answer at revision rev may be older than a deletion the
 * stream showed meanwhile: then it is asked again. */
static int outdated(const lk_lock *l, int64_t rev)
{
    return l->seen_rev > rev;
}

static void queue(lk_locks *ls, lk_lock *l);

/* Where an answer that showed our key (created at my_rev) leads. */
static void placed(lk_locks *ls, lk_lock *l, int first, int64_t rev)
{
    if (first && !outdated(l, rev)) {
        became_owner(ls, l);  /* the oldest: within any limit */
    } else if (l->limit > 1) {
        check(ls, l);         /* its rank decides, wait or not */
    } else if (!l->wait) {
        report_fail(ls, l, LK_ERR_LOCKED, "held by another owner");
        start_delete(ls, l);
    } else {
        check(ls, l);
    }
}

/* The answer to the first try: owned at once, or someone is there. */
static void on_try(lk_req *r)
{
    lk_lock *l = r->owner;
    lk_locks *ls = l->ls;
    lk_txn_resp t;
    if (lock_answer(r, &t)) return;
    int64_t rev = t.revision;
    if (t.succeeded) {
        l->my_rev = rev;  /* the only key: the owner */
        lk_txn_resp_free(&t);
        placed(ls, l, 1, rev);
        return;
    }
    const lk_kv *mine = lk_range_first(lk_txn_range(&t, 0));
    const lk_kv *owner = lk_range_first(lk_txn_range(&t, 1));
    int stale = 0, first = 0;
    l->my_rev = mine ? mine->create_rev : 0;
    if (mine)  /* an earlier try's key */
        stale = !same(&l->value, mine->value.data, mine->value.len);
    if (mine) first = key_is(owner, &l->key);
    lk_txn_resp_free(&t);
    if (!mine && !l->wait) {  /* try-lock: nothing was written */
        report_fail(ls, l, LK_ERR_LOCKED, "held by another owner");
        l->lease = 0;
        finish(ls, l);
    } else if (!mine) {
        queue(ls, l);
    } else if (l->my_rev <= 0) {
        transient(ls, l, LK_ERR_PROTOCOL, "etcd's answer has a key without its revision");
    } else {
        if (stale) refresh_value(ls, l);
        placed(ls, l, first, rev);
    }
}

static void on_acquire(lk_req *r)
{
    lk_lock *l = r->owner;
    lk_locks *ls = l->ls;
    lk_txn_resp t;
    if (lock_answer(r, &t)) return;
    int64_t rev = t.revision;
    const lk_kv *owner = lk_range_first(lk_txn_range(&t, 1));
    if (t.succeeded) {
        l->my_rev = rev;  /* created by this txn */
    } else {  /* our key was there already: keep its place in the queue */
        const lk_kv *mine = lk_range_first(lk_txn_range(&t, 0));
        l->my_rev = mine ? mine->create_rev : 0;
        if (mine && !same(&l->value, mine->value.data, mine->value.len))
            refresh_value(ls, l);
    }
    int first = key_is(owner, &l->key);
    lk_txn_resp_free(&t);
    if (l->my_rev <= 0)
        transient(ls, l, LK_ERR_PROTOCOL, "acquire answer without the own key");
    else
        placed(ls, l, first, rev);
}

static void start_acquire(lk_locks *ls, lk_lock *l)
{
    if (lk_map_get(&ls->cleaning, l->name.data, l->name.len)) {
        l->state = LS_CLEANUP;  /* a stray key of ours goes first */
        return;
    }
    if (!lk_session_ready(ls->session)) {
        l->state = LS_SESSION;
        lk_session_need(ls->session);
        return;
    }
    l->lease = ls->session->lease;
    lk_buf_reset(&l->key);
    if (l->limit > 1) {  /* a semaphore: its key and limit, then its rank */
        lk_buf_reset(&l->limit_key);
        if (lk_key_contender(&l->key, bytes(&l->dir), l->lease) ||
            lk_key_contender(&l->limit_key, bytes(&l->limit_dir), l->lease)) {
            send_txn(ls, l, NULL, LS_ACQUIRE, on_acquire);
            return;
        }
        queue(ls, l);
        return;
    }
    lk_txn_build b;
    int failed = lk_key_contender(&l->key, bytes(&l->dir), l->lease);
    send_txn(ls, l, failed ? NULL : lk_recipe_try(&b, bytes(&l->key), bytes(&l->value),
                                                  l->lease, bytes(&l->dir)),
             LS_ACQUIRE, on_try);
}

/* Someone holds the name: write our contender key (behind them). */
static void queue(lk_locks *ls, lk_lock *l)
{
    lk_txn_build b;
    send_txn(ls, l, l->limit > 1
        ? lk_recipe_sem_acquire(&b, bytes(&l->key), bytes(&l->value), l->lease,
                                bytes(&l->dir), bytes(&l->limit_key), l->limit)
        : lk_recipe_acquire(&b, bytes(&l->key), bytes(&l->value), l->lease, bytes(&l->dir)),
        LS_ACQUIRE, on_acquire);
}

/* Lock-delay: the predecessor this lock waited for went without a mark of
 * a clean release (expired, deleted by someone, or released by a client
 * that does not mark): the lock is owned only after the delay. */
static int must_delay(const lk_locks *ls, const lk_lock *l)
{
    return ls->io->cfg.lock_delay_ms > 0 && l->state == LS_CHECK && l->pred.len &&
           !l->pred_clean && !l->delay_served;
}

/* The lock cannot share its name with contenders of another limit: it
 * fails with "limit" and its keys go. */
static void wrong_limit(lk_locks *ls, lk_lock *l, const char *why)
{
    drop(ls, l, LK_ERR_LIMIT, why);
    report_fail(ls, l, LK_ERR_LIMIT, why);
    l->keep = 0;
    start_delete(ls, l);
}

/* The limit the oldest contender (first) asked for: its limit key's value,
 * 1 when it has none (a plain lock, etcdctl lock), 0 when unreadable. */
static int oldest_limit(const lk_lock *l, const lk_kv *first, const lk_range_resp *limits)
{
    lk_buf want = {0};
    int n = 1;
    if (lk_key_contender(&want, bytes(&l->limit_dir), first->lease)) return 0;
    for (size_t i = 0; limits && i < limits->n; i++) {
        const lk_kv *kv = &limits->kvs[i];
        if (kv->key.len == want.len && memcmp(kv->key.data, want.data, want.len) == 0) {
            char digits[12];
            size_t len = kv->value.len < sizeof digits - 1 ? kv->value.len : sizeof digits - 1;
            memcpy(digits, kv->value.data ? kv->value.data : "", len);
            digits[len] = '\0';
            char *end;
            long v = strtol(digits, &end, 10);
            n = (len && *end == '\0' && v >= 1 && v <= LK_MAX_LIMIT) ? (int)v : 0;
            break;
        }
    }
    lk_buf_free(&want);
    return n;
}

/* A semaphore's rank: owned while fewer than limit keys are older than
 * ours, if the oldest contender asks for the same limit. Waiting, it
 * remembers the older keys, and only their deletions (seen on the stream)
 * count down to its turn: one deletion wakes one waiter, never a herd. */
static void on_sem_check(lk_req *r)
{
    lk_lock *l = r->owner;
    lk_locks *ls = l->ls;
    lk_txn_resp t;
    if (lock_answer(r, &t)) return;
    int64_t rev = t.revision;
    const lk_range_resp *older = lk_txn_range(&t, 0), *limits = lk_txn_range(&t, 2);
    const lk_kv *mine = lk_range_first(lk_txn_range(&t, 1));
    int64_t mine_rev = mine ? mine->create_rev : 0;
    if (mine_rev != l->my_rev) {
        lk_txn_resp_free(&t);
        lost_key(ls, l, mine_rev ? "its key was replaced"
                                 : "its key vanished (session lease expired?)");
        return;
    }
    if (outdated(l, rev)) {
        lk_txn_resp_free(&t);
        check(ls, l);
        return;
    }
    lk_map_free(&l->before);
    int ahead = 0, bad = 0, want = l->limit;
    for (size_t i = 0; older && i < older->n; i++) {
        const lk_kv *kv = &older->kvs[i];
        if (lk_map_put(&l->before, kv->key.data, kv->key.len, (void *)1)) {
            bad = 1;
            break;
        }
        if (ahead++ == 0) want = oldest_limit(l, kv, limits);
    }
    lk_txn_resp_free(&t);
    char why[LK_MSG_SIZE];
    if (bad) {
        transient(ls, l, LK_ERR_NOMEM, "out of memory for the keys ahead of it");
    } else if (want != l->limit) {
        if (want == 1)
            snprintf(why, sizeof why, "its oldest contender holds it as a plain lock (limit 1), "
                                      "not as a semaphore of limit %d", l->limit);
        else if (want == 0)
            snprintf(why, sizeof why, "its oldest contender's limit key is unreadable");
        else
            snprintf(why, sizeof why, "its contenders share a limit of %d, not %d", want, l->limit);
        wrong_limit(ls, l, why);
    } else if (ahead < l->limit) {
        lk_map_free(&l->before);
        became_owner(ls, l);
    } else if (!l->wait) {
        snprintf(why, sizeof why, "all %d places are held", l->limit);
        report_fail(ls, l, LK_ERR_LOCKED, why);
        start_delete(ls, l);
    } else {
        drop(ls, l, LK_ERR_LOST, "other owners are ahead of it");
        l->state = LS_WAITING;
    }
}

static void on_check(lk_req *r)
{
    lk_lock *l = r->owner;
    lk_locks *ls = l->ls;
    lk_txn_resp t;
    if (lock_answer(r, &t)) return;
    int64_t rev = t.revision;
    const lk_kv *pred = lk_range_first(lk_txn_range(&t, 0));
    const lk_kv *mine = lk_range_first(lk_txn_range(&t, 1));
    const lk_range_resp *limit_keys = lk_txn_range(&t, 2);
    int64_t limits = limit_keys ? limit_keys->count : 0;
    if (pred) {
        if (!same(&l->pred, pred->key.data, pred->key.len)) l->pred_clean = 0;
        lk_buf_reset(&l->pred);
        lk_buf_append(&l->pred, pred->key.data, pred->key.len);
    }
    int64_t mine_rev = mine ? mine->create_rev : 0;
    int had_pred = pred != NULL;
    lk_txn_resp_free(&t);
    if (mine_rev != l->my_rev) {
        lost_key(ls, l, mine_rev ? "its key was replaced"
                                 : "its key vanished (session lease expired?)");
    } else if (outdated(l, rev)) {
        check(ls, l);
    } else if (limits > 0) {
        wrong_limit(ls, l, "its name has semaphore contenders (a limit > 1): a plain lock "
                           "cannot share it");
    } else if (!had_pred && must_delay(ls, l)) {
        l->state = LS_DELAYED;
        l->delay_until = lk_now_ms() + ls->io->cfg.lock_delay_ms;
        wake_at(ls, l->delay_until);
    } else if (!had_pred) {
        became_owner(ls, l);
    } else {
        drop(ls, l, LK_ERR_LOST, "another owner is ahead of it");
        l->state = LS_WAITING;
    }
}

/* Asks etcd who is just before us, and whether our key still exists (a
 * semaphore: everyone before us, and the limits). */
static void check(lk_locks *ls, lk_lock *l)
{
    lk_txn_build b;
    send_txn(ls, l, l->limit > 1
        ? lk_recipe_sem_check(&b, bytes(&l->dir), l->my_rev, bytes(&l->key), bytes(&l->limit_dir))
        : lk_recipe_check(&b, bytes(&l->dir), l->my_rev, bytes(&l->key), bytes(&l->limit_dir)),
        LS_CHECK, l->limit > 1 ? on_sem_check : on_check);
}

static void on_delete(lk_req *r)
{
    lk_lock *l = r->owner;
    lk_locks *ls = l->ls;
    l->req = NULL;
    lk_err code;
    char msg[LK_MSG_SIZE];
    if (lk_answer_ok(r, &code, msg, sizeof msg) == 0 || code == LK_ERR_LEASE_LOST) {
        finish(ls, l);
        return;
    }
    if (l->release_id) {  /* tell release() now; keep trying behind it */
        lk_emit_fail(ls->io, l->release_id, code, "lock '%.*s': release: %s",
                     show_len(l), l->name.data, msg);
        l->release_id = 0;
    }
    retry_later(ls, l);
}

/* Deletes our key, then the lock is over. A request in flight is answered
 * first (a put could otherwise land after the delete). */
static void start_delete(lk_locks *ls, lk_lock *l)
{
    drop(ls, l, LK_OK, NULL);
    l->state = LS_DELETE;
    l->retry_at = 0;
    if (l->req) return;  /* lock_answer comes back here */
    if (!l->lease || l->lease != ls->session->lease) {  /* no key, or gone */
        finish(ls, l);
        return;
    }
    lk_buf mark = {0};
    lk_txn_build b;
    int marked = l->mark_release && ls->io->cfg.lock_delay_ms > 0 && l->limit == 1;
    if (l->limit > 1) {  /* its contender key and its limit key */
        l->req = lk_send_txn(ls->io, lk_recipe_delete2(&b, bytes(&l->key), bytes(&l->limit_key)),
                             on_delete, l, 0);
    } else if (marked) {
        l->req = lk_key_released(&mark, (lk_bytes){ls->io->cfg.prefix, ls->io->cfg.prefix_len},
                                 bytes(&l->name))
                 ? NULL
                 : lk_send_txn(ls->io, lk_recipe_release(&b, bytes(&l->key), l->my_rev,
                                                         bytes(&mark), l->lease),
                               on_delete, l, 0);
    } else {
        l->req = lk_send_delete(ls->io, &(lk_delete_req){bytes(&l->key)}, on_delete, l, 0);
    }
    if (!l->req) retry_later(ls, l);
    lk_buf_free(&mark);
}

/* ---- stray keys ---- */

/* A key of our lease that no lock of ours claims (a put that reached etcd
 * after the lock gave up on it) is deleted, if it is still that key. New
 * locks on its name wait meanwhile, so they never adopt it. */
struct lk_cleanup {
    lk_locks *ls;
    lk_buf name;
    lk_req *req;
    lk_cleanup *prev, *next;
};

static void free_cleanup(lk_cleanup *c)
{
    lk_locks *ls = c->ls;
    if (c->prev) c->prev->next = c->next;
    else if (ls->cleanups == c) ls->cleanups = c->next;
    if (c->next) c->next->prev = c->prev;
    lk_buf_free(&c->name);
    free(c);
}

static void cleaning_add(lk_locks *ls, const char *name, size_t len, int d)
{
    intptr_t n = (intptr_t)lk_map_get(&ls->cleaning, name, len) + d;
    if (n > 0) {
        if (lk_map_put(&ls->cleaning, name, len, (void *)n) == 0) return;
    }
    lk_map_del(&ls->cleaning, name, len);
    lk_lock *l = lk_map_get(&ls->by_name, name, len);
    if (l && l->state == LS_CLEANUP) start_acquire(ls, l);
}

static void on_cleanup(lk_req *r)
{
    lk_cleanup *c = r->owner;
    lk_locks *ls = c->ls;
    lk_buf name = c->name;
    c->name = (lk_buf){0};
    free_cleanup(c);
    cleaning_add(ls, name.data, name.len, -1);
    lk_buf_free(&name);
}

static void delete_stray(lk_locks *ls, const lk_change *ch)
{
    lk_cleanup *c = calloc(1, sizeof *c);
    lk_txn_build b;
    if (!c) return;  /* no memory: the key goes with the lease at close */
    c->ls = ls;
    c->next = ls->cleanups;
    if (ls->cleanups) ls->cleanups->prev = c;
    ls->cleanups = c;
    if (lk_buf_append(&c->name, ch->name, ch->name_len) ||
        !(c->req = lk_send_txn(ls->io, lk_recipe_delete_if(&b, bytes(&ch->kv->key),
                                                            ch->kv->create_rev),
                               on_cleanup, c, 0))) {
        free_cleanup(c);
        return;
    }
    cleaning_add(ls, ch->name, ch->name_len, 1);
}

/* ---- commands ---- */

static int copy(lk_buf *b, const char *p, size_t n)
{
    lk_buf_reset(b);
    return lk_buf_append(b, p, n);
}

/* Whether every lock of this client on a name is only deleting what is
 * left of it (released, timed out): a try-lock then waits its turn. */
static int only_deleting(const lk_lock *head)
{
    for (const lk_lock *p = head; p; p = p->queued)
        if (p->state != LS_DELETE) return 0;
    return 1;
}

static void lock_command(lk_locks *ls, lk_cmd *c)
{
    const lk_config *cfg = &ls->io->cfg;
    lk_lock *l = calloc(1, sizeof *l);
    if (!l || copy(&l->name, c->name, c->name_len) ||
        lk_key_dir(&l->dir, (lk_bytes){cfg->prefix, cfg->prefix_len},
                   (lk_bytes){c->name, c->name_len}) ||
        copy(&l->value, c->value, c->value_len) ||
        lk_key_limit_dir(&l->limit_dir, (lk_bytes){cfg->prefix, cfg->prefix_len},
                         (lk_bytes){c->name, c->name_len})) {
        if (l) free_lock(l);
        lk_emit_fail(ls->io, c->id, LK_ERR_NOMEM, "out of memory");
        return;
    }
    l->ls = ls;
    l->id = c->id;
    l->wait = c->wait;
    l->keep = c->keep;
    l->limit = c->limit > 1 ? c->limit : 1;
    l->background = c->background;
    l->ownership = c->ownership;
    c->ownership = NULL;
    /* a try-lock is bounded too: a lease, a stream, a txn, each within
     * the request timeout, with room for one failover */
    int64_t timeout = c->timeout_ms >= 0 ? c->timeout_ms
                    : !l->wait ? 2 * (int64_t)cfg->timeout_ms : -1;
    if (timeout >= 0) {
        l->deadline = lk_now_ms() + timeout;
        wake_at(ls, l->deadline);
    }
    lk_lock *head = lk_map_get(&ls->by_name, l->name.data, l->name.len);
    if (head && !l->wait && !only_deleting(head)) {
        lk_emit_fail(ls->io, l->id, LK_ERR_LOCKED, "lock '%.*s': held by this client",
                     show_len(l), l->name.data);
        free_lock(l);
        return;
    }
    uint64_t id = l->id;
    lk_map_put(&ls->by_id, &id, sizeof id, l);
    l->asked_us = lk_now_us();
    l->waiting = 1;
    lk_metric_add(&ls->io->metrics.locks_waiting, 1);
    l->next = ls->all;
    if (ls->all) ls->all->prev = l;
    ls->all = l;
    if (head) {  /* same name through this client: wait our turn locally */
        while (head->queued) head = head->queued;
        head->queued = l;
        l->state = LS_QUEUED;
        return;
    }
    lk_map_put(&ls->by_name, l->name.data, l->name.len, l);
    start_acquire(ls, l);
}

static void release_command(lk_locks *ls, lk_cmd *c)
{
    uint64_t id = c->target;
    lk_lock *l = lk_map_get(&ls->by_id, &id, sizeof id);
    if (!l) {
        lk_emit_ok(ls->io, c->id);  /* already over: release is idempotent */
        return;
    }
    if (l->release_id) lk_emit_ok(ls->io, l->release_id);
    l->release_id = c->id;
    l->keep = 0;
    l->mark_release = l->until && lk_now_ms() < l->until;  /* a clean release */
    report_fail(ls, l, LK_ERR_CANCELED, "released before it was acquired");
    if (l->state == LS_DELETE && l->req) return;  /* on its way */
    if (l->state == LS_QUEUED) finish(ls, l);
    else start_delete(ls, l);  /* finishes at once when there is no key */
}

/* A guarded write (set, or a value refreshed) found the lock's key gone
 * or replaced: the lock is lost at once, whatever else says it is held. */
static void guard_failed(lk_locks *ls, const lk_req *r)
{
    uint64_t id = r->tag;
    lk_lock *l = lk_map_get(&ls->by_id, &id, sizeof id);
    if (!l || l->state == LS_DELETE || !l->lease || l->my_rev != r->tag_rev)
        return;  /* over, or on another key by now */
    if (l->req) {  /* its answer decides: make it look again */
        l->seen_rev = INT64_MAX;
        return;
    }
    lost_key(ls, l, "its key is gone (a write guarded by its token failed)");
}

static void on_set(lk_req *r)
{
    lk_locks *ls = r->owner;
    lk_txn_resp t;
    if (r->id) {
        if (lk_request_txn(ls->io, r, "set", &t)) return;
    } else {  /* a refresh: nobody waits for it */
        lk_err code;
        char msg[LK_MSG_SIZE];
        if (lk_answer_txn(r, &t, &code, msg, sizeof msg)) return;
    }
    int ok = t.succeeded;
    lk_txn_resp_free(&t);
    if (!ok) guard_failed(ls, r);  /* first: set() returns to a lock not owned */
    if (r->id && ok) lk_emit_ok(ls->io, r->id);
    else if (r->id) lk_emit_fail(ls->io, r->id, LK_ERR_LOST, "set: the lock was lost "
                                 "(its key is gone)");
}

/* lock:put / lock:delete: a write of any key, done only if the lock's key
 * still exists with its token; a failed guard ends the lock. */
static void guarded_answer(lk_req *r, const char *what)
{
    lk_locks *ls = r->owner;
    lk_txn_resp t;
    if (lk_request_txn(ls->io, r, what, &t)) return;
    int ok = t.succeeded;
    int64_t rev = t.revision;
    lk_txn_resp_free(&t);
    if (!ok) {
        guard_failed(ls, r);
        lk_emit_fail(ls->io, r->id, LK_ERR_NOT_OWNER, "%s: the lock was lost (its key "
                     "is gone): nothing was written", what);
        return;
    }
    lk_event *ev = lk_event_new(LK_EV_RESULT, r->id);
    if (ev) {
        ev->ok = 1;
        ev->revision = rev;
    }
    lk_emit(ls->io, ev);
}

static void on_put(lk_req *r) { guarded_answer(r, "put"); }
static void on_delete_key(lk_req *r) { guarded_answer(r, "delete"); }

static void guarded_command(lk_locks *ls, lk_cmd *c)
{
    const char *what = c->kind == LK_CMD_PUT ? "put" : "delete";
    uint64_t id = c->target;
    lk_lock *l = lk_map_get(&ls->by_id, &id, sizeof id);
    if (!l || !l->until || lk_now_ms() >= l->until) {  /* as owned() says */
        lk_emit_fail(ls->io, c->id, LK_ERR_NOT_OWNER, "%s: the lock is not owned", what);
        return;
    }
    lk_txn_build b;
    lk_bytes value = {c->value, c->value_len};
    lk_req *r = lk_send_txn(ls->io, lk_recipe_guarded(&b, bytes(&l->key), l->my_rev,
                                                      (lk_bytes){c->name, c->name_len},
                                                      c->kind == LK_CMD_PUT ? &value : NULL),
                            c->kind == LK_CMD_PUT ? on_put : on_delete_key, ls, 0);
    if (!r) {
        lk_emit_fail(ls->io, c->id, LK_ERR_NOMEM, "%s: out of memory", what);
        return;
    }
    r->id = c->id;
    r->tag = l->id;
    r->tag_rev = l->my_rev;
}

static void set_command(lk_locks *ls, lk_cmd *c)
{
    uint64_t id = c->target;
    lk_lock *l = lk_map_get(&ls->by_id, &id, sizeof id);
    if (!l || !l->until || lk_now_ms() >= l->until) {  /* as owned() says */
        lk_emit_fail(ls->io, c->id, LK_ERR_NOT_OWNER, "set: the lock is not owned");
        return;
    }
    if (copy(&l->value, c->value, c->value_len) || !guarded_put(ls, l, c->id))
        lk_emit_fail(ls->io, c->id, LK_ERR_NOMEM, "set: out of memory");
}

void lk_locks_command(lk_locks *ls, lk_cmd *c)
{
    switch (c->kind) {
    case LK_CMD_LOCK: lock_command(ls, c); break;
    case LK_CMD_RELEASE: release_command(ls, c); break;
    case LK_CMD_SET: set_command(ls, c); break;
    case LK_CMD_PUT: case LK_CMD_DELETE: guarded_command(ls, c); break;
    default: lk_emit_fail(ls->io, c->id, LK_ERR_INTERNAL, "unknown command"); break;
    }
    lk_cmd_free(c);
}

void lk_locks_init(lk_locks *ls, lk_io *io, lk_session *session)
{
    memset(ls, 0, sizeof *ls);
    ls->io = io;
    ls->session = session;
}

int lk_locks_any(const lk_locks *ls)
{
    return ls->all != NULL || ls->cleaning.count > 0;
}


/* ---- the session's news ---- */

void lk_locks_session_ready(lk_locks *ls)
{
    for (lk_lock *l = ls->all, *next; l; l = next) {
        next = l->next;
        if (l->state == LS_SESSION) {
            start_acquire(ls, l);
        } else if (l->resync) {  /* the new stream covers what comes next */
            l->resync = 0;
            if (l->req) l->seen_rev = INT64_MAX;  /* its answer is too old */
            else if (l->state == LS_WAITING || l->state == LS_HELD) check(ls, l);
        }
    }
}

void lk_locks_session_failed(lk_locks *ls, lk_err code, const char *msg)
{
    for (lk_lock *l = ls->all, *next; l; l = next) {
        next = l->next;
        if (l->state == LS_SESSION && !l->reported && !l->background) {
            report_fail(ls, l, code, msg);
            start_delete(ls, l);  /* an earlier try may have left a key */
        }
    }
}

void lk_locks_lease_lost(lk_locks *ls, const char *why)
{
    for (lk_lock *l = ls->all, *next; l; l = next) {
        next = l->next;
        if (!l->lease) continue;
        cancel_req(l);
        drop(ls, l, LK_ERR_LEASE_LOST, why);
        l->lease = 0;  /* its key went with the lease */
        if (l->state == LS_DELETE) {
            finish(ls, l);
        } else if (l->keep) {
            start_acquire(ls, l);  /* waits for the new lease */
        } else {
            report_fail(ls, l, LK_ERR_LEASE_LOST, why);
            finish(ls, l);
        }
    }
}

void lk_locks_renewed(lk_locks *ls)
{
    for (lk_lock *l = ls->all, *next; l; l = next) {
        next = l->next;
        if (!l->holds) continue;
        if (l->until) publish(ls, l, LK_OK, NULL);        /* a later deadline */
        else if (!l->req && l->state == LS_HELD) check(ls, l);  /* confirm */
    }
}

void lk_locks_expired(lk_locks *ls)
{
    static const char why[] = "session lease not renewed in time";
    for (lk_lock *l = ls->all, *next; l; l = next) {
        next = l->next;
        int was = l->until != 0;
        publish(ls, l, LK_ERR_LEASE_LOST, why);  /* not owned any more */
        if (was && !l->keep) {
            l->holds = 0;
            start_delete(ls, l);
        }
    }
}

void lk_locks_resync(lk_locks *ls)
{
    /* events were lost; a check now could miss a deletion that happens
     * before the new stream starts: check once it has */
    for (lk_lock *l = ls->all; l; l = l->next)
        if (l->state == LS_WAITING || l->state == LS_HELD ||
            l->state == LS_CHECK || l->state == LS_ACQUIRE)
            l->resync = 1;
}

void lk_locks_changed(lk_locks *ls, const lk_change *ch)
{
    const lk_kv *kv = ch->kv;
    lk_lock *l = lk_map_get(&ls->by_name, ch->name, ch->name_len);
    if (ch->marker) {  /* a clean release of kv's value, the contender key */
        if (l && !ch->deleted && l->pred.len && same(&l->pred, kv->value.data, kv->value.len))
            l->pred_clean = 1;
        return;
    }
    int mine = l && l->lease && same(&l->key, kv->key.data, kv->key.len);
    if (!ch->deleted) {
        if (kv->lease && kv->lease == ls->session->lease &&
            (!mine || l->state == LS_DELETE))
            delete_stray(ls, ch);
        return;
    }
    if (!l || l->state == LS_DELETE) return;
    if (l->req) {  /* the answer in flight may be older: it will tell */
        if (kv->mod_rev > l->seen_rev) l->seen_rev = kv->mod_rev;
        return;
    }
    if (mine) {
        if (kv->mod_rev < l->my_rev) return;  /* an older key of ours */
        if (l->holds || l->state == LS_WAITING || l->state == LS_DELAYED)
            lost_key(ls, l, "its key was deleted by someone else");
    } else if (l->state == LS_WAITING && l->limit > 1) {
        /* an older key gone: the waiter whose turn it makes checks */
        if (lk_map_del(&l->before, kv->key.data, kv->key.len) &&
            l->before.count < (size_t)l->limit)
            check(ls, l);
    } else if (l->state == LS_WAITING && same(&l->pred, kv->key.data, kv->key.len)) {
        check(ls, l);
    }
}

/* An owned lock whose key nothing has confirmed lately: read it when the
 * stream's proofs are late, stop owning when the trust time has run out
 * (it owns again when a read shows the key). */
static void unconfirmed(lk_locks *ls, lk_lock *l, int64_t now)
{
    if (l->until && now >= l->until) {
        char why[128];
        snprintf(why, sizeof why, "its key was not confirmed for %" PRId64 " ms (the "
                 "watch stream is silent, or etcd does not answer)",
                 lk_session_trust_ms(ls->session));
        publish(ls, l, LK_ERR_UNAVAILABLE, why);
    } else if (l->until) {
        wake_at(ls, l->until);
    }
    int64_t late = read_key_at(ls, l);
    if (l->state == LS_HELD && !l->req && l->holds) {
        if (now >= late) check(ls, l);
        else wake_at(ls, late);
    }
}

int64_t lk_locks_tick(lk_locks *ls, int64_t now)
{
    if (!ls->tick_at || now < ls->tick_at) return ls->tick_at;
    ls->tick_at = 0;
    for (lk_lock *l = ls->all, *next; l; l = next) {
        next = l->next;
        if (l->deadline && !l->reported) {
            /* the caller's bound: answered now, even with a request in
             * flight (whose answer then leads to the delete) */
            if (now >= l->deadline) {
                const char *why;
                lk_err cause = lk_session_failure(ls->session, &why);
                if (l->state == LS_SESSION && cause) {  /* the known cause */
                    char msg[LK_MSG_SIZE];
                    snprintf(msg, sizeof msg, "timed out waiting for the session: %s", why);
                    report_fail(ls, l, cause, msg);
                } else {
                    report_fail(ls, l, LK_ERR_TIMEOUT, "timed out waiting for the lock");
                }
                l->keep = 0;
                if (l->req) {
                    drop(ls, l, LK_OK, NULL);
                    l->state = LS_DELETE;
                } else {
                    start_delete(ls, l);
                }
                continue;
            }
            wake_at(ls, l->deadline);
        }
        if (l->until || (l->holds && l->state == LS_HELD)) unconfirmed(ls, l, now);
        if (l->state == LS_DELAYED && !l->req) {
            if (now >= l->delay_until) {
                l->delay_served = 1;
                check(ls, l);  /* still first, and its key still there? */
            } else {
                wake_at(ls, l->delay_until);
            }
        }
        if (l->retry_at && !l->req &&
            (l->state == LS_RETRY || l->state == LS_DELETE)) {
            if (now >= l->retry_at) {
                l->retry_at = 0;
                if (l->state == LS_RETRY) start_acquire(ls, l);
                else start_delete(ls, l);
            } else {
                wake_at(ls, l->retry_at);
            }
        }
    }
    return ls->tick_at;
}

void lk_locks_close(lk_locks *ls)
{
    ls->stopping = 1;
    while (ls->all) {
        lk_lock *l = ls->all;
        report_fail(ls, l, LK_ERR_CLOSED, "client closed");
        cancel_req(l);
        drop(ls, l, LK_ERR_CLOSED, "client closed");
        l->lease = 0;
        finish(ls, l);
    }
    while (ls->cleanups) {
        lk_req_cancel(ls->cleanups->req);
        free_cleanup(ls->cleanups);
    }
    lk_map_free(&ls->by_name);
    lk_map_free(&ls->by_id);
    lk_map_free(&ls->cleaning);
}
