/* Locks: etcd's concurrency layout (a contender key per lease under
 * prefix NAME "/", owner = lowest create_revision), one state machine per
 * lock, driven by request answers, the session's watch stream and timers.
 * Also get (the owner's value) and set (Proclaim), which read the same keys. */
#include "internal.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RETRY_MS 250

typedef enum {
    LS_QUEUED,     /* behind another lock of this client on the same name */
    LS_SESSION,    /* waiting for the lease and the watch stream */
    LS_ACQUIRE,    /* put + owner txn in flight */
    LS_CHECK,      /* predecessor + own key txn in flight */
    LS_WAITING,    /* waiting for the predecessor's deletion */
    LS_HELD,
    LS_JEOPARDY,   /* held, lease unconfirmed; keep locks wait to re-check */
    LS_RETRY,      /* a request failed; acquire again at retry_at */
    LS_DELETE      /* deleting the own key; then the lock is over */
} lock_state;

struct lk_lock {
    lk_engine *engine;
    uint64_t id;
    lock_state state;
    lk_buf name, dir, key, value;
    int64_t lease;          /* lease the key was written on; 0: no key */
    int64_t my_rev;         /* the key's create_revision: the token */
    lk_buf pred;            /* the key we wait to see deleted */
    int wait, keep;
    int background;         /* keeps trying even when etcd is unreachable */
    int64_t deadline;       /* for the first acquisition; 0: none */
    int64_t retry_at;       /* LS_RETRY, LS_DELETE after a failure */
    int reported;           /* lock() has its answer */
    int owned;              /* as last reported */
    int recheck;            /* something under dir was deleted during CHECK */
    int resync;             /* the stream had a gap: check once it is back */
    uint64_t release_id;    /* release() waiting for the delete */
    lk_status *status;
    lk_req *req;
    lk_lock *prev, *next;   /* every lock of the engine */
    lk_lock *queued;        /* next lock of this client on the same name */
};

static void start_acquire(lk_engine *e, lk_lock *l);
static void start_delete(lk_engine *e, lk_lock *l);
static void check(lk_engine *e, lk_lock *l);

static void wake_at(lk_engine *e, int64_t t)
{
    if (!e->lock_tick_at || t < e->lock_tick_at) e->lock_tick_at = t;
}

static int show_len(const lk_lock *l)
{
    return l->name.len > 80 ? 80 : (int)l->name.len;
}

static void report_ok(lk_engine *e, lk_lock *l)
{
    if (l->reported) return;
    l->reported = 1;
    l->deadline = 0;
    lk_event *ev = lk_event_new(LK_EV_RESULT, l->id);
    if (!ev) return;
    ev->ok = 1;
    ev->token = l->my_rev;
    lk_emit(e, ev);
}

static void report_fail(lk_engine *e, lk_lock *l, const char *code,
                        const char *why)
{
    if (l->reported) return;
    l->reported = 1;
    l->deadline = 0;
    lk_emit_fail(e, l->id, code, "lock '%.*s': %s", show_len(l), l->name.data,
                 why);
}

static void set_owned(lk_engine *e, lk_lock *l, int owned, const char *code,
                      const char *why)
{
    if (l->owned == owned) return;
    l->owned = owned;
    lk_status_set(l->status, owned, l->my_rev);
    lk_event *ev = lk_event_new(LK_EV_OWNED, l->id);
    if (!ev) return;
    ev->owned = owned;
    ev->token = l->my_rev;
    if (code) {
        char msg[LK_MSG_SIZE];
        snprintf(msg, sizeof msg, "lock '%.*s': %s", show_len(l), l->name.data,
                 why);
        snprintf(ev->code, sizeof ev->code, "%s", code);
        ev->msg = strdup(msg);
    }
    lk_emit(e, ev);
}

static void cancel_req(lk_lock *l)
{
    if (l->req) lk_req_cancel(l->req);
    l->req = NULL;
}

/* The lock is over: frees it and lets the next local lock on its name go. */
static void finish(lk_engine *e, lk_lock *l)
{
    cancel_req(l);
    set_owned(e, l, 0, NULL, NULL);
    if (l->release_id) lk_emit_ok(e, l->release_id);
    uint64_t id = l->id;
    lk_map_del(&e->locks_by_id, &id, sizeof id);
    if (l->prev) l->prev->next = l->next;
    else e->locks = l->next;
    if (l->next) l->next->prev = l->prev;
    lk_lock *head = lk_map_get(&e->locks_by_name, l->name.data, l->name.len);
    if (head == l) {
        if (l->queued && !e->stopping) {
            lk_map_put(&e->locks_by_name, l->name.data, l->name.len, l->queued);
            start_acquire(e, l->queued);
        } else {
            lk_map_del(&e->locks_by_name, l->name.data, l->name.len);
        }
    } else {  /* queued behind another */
        for (lk_lock *p = head; p; p = p->queued)
            if (p->queued == l) {
                p->queued = l->queued;
                break;
            }
    }
    lk_buf_free(&l->name);
    lk_buf_free(&l->dir);
    lk_buf_free(&l->key);
    lk_buf_free(&l->value);
    lk_buf_free(&l->pred);
    lk_status_unref(l->status);
    free(l);
}

static lk_bytes bytes(const lk_buf *b)
{
    return (lk_bytes){b->data, b->len};
}

static void became_owner(lk_engine *e, lk_lock *l)
{
    l->state = LS_HELD;
    set_owned(e, l, 1, NULL, NULL);
    report_ok(e, l);
}

/* Our key is gone (deleted by someone, or vanished while we waited). */
static void lost_key(lk_engine *e, lk_lock *l, const char *why)
{
    cancel_req(l);
    set_owned(e, l, 0, "lost", why);
    if (l->keep) {
        start_acquire(e, l);
        return;
    }
    report_fail(e, l, "lost", why);
    l->lease = 0;
    finish(e, l);
}

/* A request of this lock failed without etcd deciding anything. */
static void transient(lk_engine *e, lk_lock *l, const char *code,
                      const char *msg)
{
    if (strcmp(code, "lease_lost") == 0) {
        lk_session_lease_gone(e, msg);  /* reaches this lock too */
        return;
    }
    if (!l->reported && !l->keep) {
        report_fail(e, l, code, msg);
        start_delete(e, l);  /* the put may have landed */
        return;
    }
    l->state = LS_RETRY;
    l->retry_at = lk_now_ms() + RETRY_MS;
    wake_at(e, l->retry_at);
}

/* Whether a kv item's key equals b. */
static int key_is(const cJSON *item, const lk_buf *b, lk_kv *kv)
{
    return item && lk_etcd_kv(item, kv) == 0 && kv->key.len == b->len &&
           memcmp(kv->key.data, b->data, b->len) == 0;
}

/* A lock request's answer: its root object, or NULL once the failure went
 * to transient(). */
static cJSON *lock_answer(lk_req *r)
{
    lk_lock *l = r->owner;
    l->req = NULL;
    const char *code;
    char msg[LK_MSG_SIZE];
    cJSON *root = lk_answer(r, &code, msg, sizeof msg);
    if (!root) transient(l->engine, l, code, msg);
    return root;
}

/* Sends the lock's next txn, whose body the caller built (build_failed:
 * it ran out of memory doing so), and enters state. */
static void send_txn(lk_engine *e, lk_lock *l, int build_failed, lk_buf *body,
                     lock_state state, lk_req_done_fn done)
{
    if (build_failed) {
        lk_buf_free(body);
        transient(e, l, "nomem", "out of memory");
        return;
    }
    l->state = state;
    l->req = lk_send(e, LK_PATH_TXN, done, l, body, 0);
    if (!l->req) transient(e, l, "nomem", "could not start a request");
}

static void on_refresh(lk_req *r)
{
    (void)r;  /* best effort: a lost lock shows up through the stream */
}

/* Puts our current value into a key that an earlier try left behind. */
static void refresh_value(lk_engine *e, lk_lock *l)
{
    lk_buf body = {0};
    if (lk_etcd_set_body(&body, bytes(&l->key), bytes(&l->value), l->lease,
                         l->my_rev) ||
        !lk_send(e, LK_PATH_TXN, on_refresh, e, &body, 0))
        lk_buf_free(&body);
}

static void queue(lk_engine *e, lk_lock *l);

/* The answer to the first try: owned at once, or someone is there. */
static void on_try(lk_req *r)
{
    lk_lock *l = r->owner;
    lk_engine *e = l->engine;
    cJSON *root = lock_answer(r);
    if (!root) return;
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "succeeded"))) {
        l->my_rev = lk_etcd_revision(root);  /* the only key: the owner */
        cJSON_Delete(root);
        became_owner(e, l);
        return;
    }
    lk_kv kv = {0};
    const cJSON *mine = lk_etcd_first_kv(lk_etcd_txn_range(root, 0));
    const cJSON *owner = lk_etcd_first_kv(lk_etcd_txn_range(root, 1));
    int stale = 0, first = 0;
    l->my_rev = mine ? lk_etcd_int(mine, "create_revision") : 0;
    if (mine && lk_etcd_kv(mine, &kv) == 0)  /* an earlier try's key */
        stale = kv.value.len != l->value.len ||
                memcmp(kv.value.data, l->value.data, l->value.len);
    if (mine) first = key_is(owner, &l->key, &kv);
    lk_etcd_kv_free(&kv);
    cJSON_Delete(root);
    if (!mine && !l->wait) {  /* try-lock: nothing was written */
        report_fail(e, l, "locked", "held by another owner");
        l->lease = 0;
        finish(e, l);
    } else if (!mine) {
        queue(e, l);
    } else {
        if (stale) refresh_value(e, l);
        if (first) became_owner(e, l);
        else if (!l->wait) {
            report_fail(e, l, "locked", "held by another owner");
            start_delete(e, l);
        } else {
            check(e, l);
        }
    }
}

static void on_acquire(lk_req *r)
{
    lk_lock *l = r->owner;
    lk_engine *e = l->engine;
    cJSON *root = lock_answer(r);
    if (!root) return;
    lk_kv kv = {0};
    const cJSON *owner;
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "succeeded"))) {
        l->my_rev = lk_etcd_revision(root);  /* created by this txn */
        owner = lk_etcd_first_kv(lk_etcd_txn_range(root, 1));
    } else {  /* our key was there already: keep its place in the queue */
        const cJSON *mine = lk_etcd_first_kv(lk_etcd_txn_range(root, 0));
        l->my_rev = mine ? lk_etcd_int(mine, "create_revision") : 0;
        owner = lk_etcd_first_kv(lk_etcd_txn_range(root, 1));
        if (mine && lk_etcd_kv(mine, &kv) == 0 &&
            (kv.value.len != l->value.len ||
             memcmp(kv.value.data, l->value.data, l->value.len)))
            refresh_value(e, l);
    }
    int first = key_is(owner, &l->key, &kv);
    lk_etcd_kv_free(&kv);
    cJSON_Delete(root);
    if (!l->my_rev) {
        transient(e, l, "protocol", "acquire answer without the own key");
    } else if (first) {
        became_owner(e, l);
    } else if (!l->wait) {
        report_fail(e, l, "locked", "held by another owner");
        start_delete(e, l);
    } else {
        check(e, l);
    }
}

static void start_acquire(lk_engine *e, lk_lock *l)
{
    if (!lk_session_ready(e)) {
        l->state = LS_SESSION;
        lk_session_need(e);
        return;
    }
    l->lease = e->session.lease;
    lk_buf_reset(&l->key);
    lk_buf body = {0};
    int failed = lk_buf_append(&l->key, l->dir.data, l->dir.len) ||
                 lk_buf_printf(&l->key, "%" PRIx64, (uint64_t)l->lease) ||
                 lk_etcd_try_body(&body, bytes(&l->key), bytes(&l->value),
                                  l->lease, bytes(&l->dir));
    send_txn(e, l, failed, &body, LS_ACQUIRE, on_try);
}

/* Someone holds the name: write our contender key (behind them). */
static void queue(lk_engine *e, lk_lock *l)
{
    lk_buf body = {0};
    int failed = lk_etcd_acquire_body(&body, bytes(&l->key), bytes(&l->value),
                                      l->lease, bytes(&l->dir));
    send_txn(e, l, failed, &body, LS_ACQUIRE, on_acquire);
}

static void on_check(lk_req *r)
{
    lk_lock *l = r->owner;
    lk_engine *e = l->engine;
    cJSON *root = lock_answer(r);
    if (!root) return;
    const cJSON *pred = lk_etcd_first_kv(lk_etcd_txn_range(root, 0));
    const cJSON *mine = lk_etcd_first_kv(lk_etcd_txn_range(root, 1));
    lk_kv kv = {0};
    int pred_ok = pred && lk_etcd_kv(pred, &kv) == 0;
    if (pred_ok) {
        lk_buf_reset(&l->pred);
        lk_buf_append(&l->pred, kv.key.data, kv.key.len);
    }
    int64_t mine_rev = mine ? lk_etcd_int(mine, "create_revision") : 0;
    lk_etcd_kv_free(&kv);
    cJSON_Delete(root);
    if (mine_rev != l->my_rev) {
        lost_key(e, l, mine_rev ? "its key was replaced"
                                : "its key vanished (session lease expired?)");
    } else if (l->recheck) {
        check(e, l);
    } else if (!pred) {
        became_owner(e, l);
    } else {
        l->state = LS_WAITING;
    }
}

/* Asks etcd who is just before us, and whether our key still exists. */
static void check(lk_engine *e, lk_lock *l)
{
    lk_buf body = {0};
    l->recheck = 0;
    int failed = lk_etcd_check_body(&body, bytes(&l->dir), l->my_rev, bytes(&l->key));
    send_txn(e, l, failed, &body, LS_CHECK, on_check);
}

static void on_delete(lk_req *r)
{
    lk_lock *l = r->owner;
    lk_engine *e = l->engine;
    l->req = NULL;
    const char *code;
    char msg[LK_MSG_SIZE];
    cJSON *root = lk_answer(r, &code, msg, sizeof msg);
    cJSON_Delete(root);
    if (root || strcmp(code, "lease_lost") == 0) {
        finish(e, l);
        return;
    }
    if (l->release_id) {  /* tell release() now; keep trying behind it */
        lk_emit_fail(e, l->release_id, code, "lock '%.*s': release: %s",
                     show_len(l), l->name.data, msg);
        l->release_id = 0;
    }
    l->retry_at = lk_now_ms() + RETRY_MS;
    wake_at(e, l->retry_at);
}

/* Deletes our key, then the lock is over. */
static void start_delete(lk_engine *e, lk_lock *l)
{
    cancel_req(l);
    set_owned(e, l, 0, NULL, NULL);
    l->state = LS_DELETE;
    l->retry_at = 0;
    if (!l->lease || l->lease != e->session.lease) {  /* no key, or gone */
        finish(e, l);
        return;
    }
    lk_buf body = {0};
    if (lk_etcd_delete_body(&body, bytes(&l->key)) ||
        !(l->req = lk_send(e, LK_PATH_DELETE, on_delete, l, &body, 0))) {
        lk_buf_free(&body);
        l->retry_at = lk_now_ms() + RETRY_MS;
        wake_at(e, l->retry_at);
    }
}

/* ---- commands ---- */

static int copy(lk_buf *b, const char *p, size_t n)
{
    lk_buf_reset(b);
    return lk_buf_append(b, p, n);
}

static void lock_command(lk_engine *e, lk_cmd *c)
{
    lk_lock *l = calloc(1, sizeof *l);
    if (!l || copy(&l->name, c->name, c->name_len) ||
        copy(&l->dir, e->cfg.prefix, e->cfg.prefix_len) ||
        lk_buf_append(&l->dir, c->name, c->name_len) ||
        lk_buf_append(&l->dir, "/", 1) ||
        copy(&l->value, c->value, c->value_len)) {
        if (l) {
            lk_buf_free(&l->name);
            lk_buf_free(&l->dir);
            lk_buf_free(&l->value);
            free(l);
        }
        lk_emit_fail(e, c->id, "nomem", "out of memory");
        return;
    }
    l->engine = e;
    l->id = c->id;
    l->wait = c->wait;
    l->keep = c->keep;
    l->background = c->background;
    l->status = c->status;
    c->status = NULL;
    if (c->timeout_ms >= 0) {
        l->deadline = lk_now_ms() + c->timeout_ms;
        wake_at(e, l->deadline);
    }
    lk_lock *head = lk_map_get(&e->locks_by_name, l->name.data, l->name.len);
    if (head && !l->wait) {
        lk_emit_fail(e, l->id, "locked", "lock '%.*s': held by this client",
                     show_len(l), l->name.data);
        lk_buf_free(&l->name);
        lk_buf_free(&l->dir);
        lk_buf_free(&l->value);
        lk_status_unref(l->status);
        free(l);
        return;
    }
    uint64_t id = l->id;
    lk_map_put(&e->locks_by_id, &id, sizeof id, l);
    l->next = e->locks;
    if (e->locks) e->locks->prev = l;
    e->locks = l;
    if (head) {  /* same name through this client: wait our turn locally */
        while (head->queued) head = head->queued;
        head->queued = l;
        l->state = LS_QUEUED;
        return;
    }
    lk_map_put(&e->locks_by_name, l->name.data, l->name.len, l);
    start_acquire(e, l);
}

static void release_command(lk_engine *e, lk_cmd *c)
{
    uint64_t id = c->target;
    lk_lock *l = lk_map_get(&e->locks_by_id, &id, sizeof id);
    if (!l) {
        lk_emit_ok(e, c->id);  /* already over: release is idempotent */
        return;
    }
    if (l->release_id) lk_emit_ok(e, l->release_id);
    l->release_id = c->id;
    l->keep = 0;
    report_fail(e, l, "canceled", "released before it was acquired");
    if (l->state == LS_DELETE && l->req) return;  /* on its way */
    if (l->state == LS_QUEUED) finish(e, l);
    else start_delete(e, l);  /* finishes at once when there is no key */
}

/* The answer to a request the Lua side waits for (set, get, status): its
 * root object, or NULL once the failure went to the caller. */
static cJSON *request_answer(lk_req *r, const char *what)
{
    lk_engine *e = r->owner;
    const char *code;
    char msg[LK_MSG_SIZE];
    cJSON *root = lk_answer(r, &code, msg, sizeof msg);
    if (!root) lk_emit_fail(e, r->id, code, "%s: %s", what, msg);
    return root;
}

static void on_set(lk_req *r)
{
    lk_engine *e = r->owner;
    cJSON *root = request_answer(r, "set");
    if (!root) return;
    int ok = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "succeeded"));
    cJSON_Delete(root);
    if (ok) lk_emit_ok(e, r->id);
    else lk_emit_fail(e, r->id, "not_owner", "set: the lock was lost");
}

static void set_command(lk_engine *e, lk_cmd *c)
{
    uint64_t id = c->target;
    lk_lock *l = lk_map_get(&e->locks_by_id, &id, sizeof id);
    if (!l || l->state != LS_HELD) {
        lk_emit_fail(e, c->id, "not_owner", "set: the lock is not held");
        return;
    }
    lk_buf body = {0};
    lk_req *r = NULL;
    if (copy(&l->value, c->value, c->value_len) ||
        lk_etcd_set_body(&body, bytes(&l->key), bytes(&l->value), l->lease,
                         l->my_rev) ||
        !(r = lk_send(e, LK_PATH_TXN, on_set, e, &body, 0))) {
        lk_buf_free(&body);
        lk_emit_fail(e, c->id, "nomem", "set: out of memory");
        return;
    }
    r->id = c->id;
}

static void on_get(lk_req *r)
{
    lk_engine *e = r->owner;
    cJSON *root = request_answer(r, "get");
    if (!root) return;
    lk_event *ev = lk_event_new(LK_EV_RESULT, r->id);
    lk_kv kv = {0};
    const cJSON *owner = lk_etcd_first_kv(root);
    if (ev) {
        ev->ok = 1;
        ev->revision = lk_etcd_revision(root);
        if (owner && lk_etcd_kv(owner, &kv) == 0) {
            ev->has_value = 1;
            ev->token = kv.create_rev;
            ev->value_len = kv.value.len;
            ev->value = kv.value.data;  /* taken over by the event */
            kv.value = (lk_buf){0};
        } else if (owner) {
            ev->ok = 0;
            snprintf(ev->code, sizeof ev->code, "protocol");
            ev->msg = strdup("get: malformed key-value in etcd's answer");
        }
    }
    lk_etcd_kv_free(&kv);
    cJSON_Delete(root);
    lk_emit(e, ev);
}

static void get_command(lk_engine *e, lk_cmd *c)
{
    lk_buf dir = {0}, body = {0};
    lk_req *r = NULL;
    if (copy(&dir, e->cfg.prefix, e->cfg.prefix_len) ||
        lk_buf_append(&dir, c->name, c->name_len) ||
        lk_buf_append(&dir, "/", 1) ||
        lk_etcd_owner_body(&body, bytes(&dir)) ||
        !(r = lk_send(e, LK_PATH_RANGE, on_get, e, &body, 0))) {
        lk_buf_free(&body);
        lk_emit_fail(e, c->id, "nomem", "get: out of memory");
    } else {
        r->id = c->id;
    }
    lk_buf_free(&dir);
}

static char *take_buf(lk_buf *b, size_t *len)
{
    char *p = b->data ? b->data : calloc(1, 1);
    *len = b->len;
    *b = (lk_buf){0};
    return p;
}

static void on_list(lk_req *r)
{
    lk_engine *e = r->owner;
    cJSON *root = request_answer(r, "status");
    if (!root) return;
    const cJSON *kvs = cJSON_GetObjectItemCaseSensitive(root, "kvs");
    int n = cJSON_GetArraySize(kvs);
    lk_event *ev = lk_event_new(LK_EV_RESULT, r->id);
    if (ev && n > 0 && !(ev->kvs = calloc((size_t)n, sizeof *ev->kvs))) {
        lk_event_free(ev);
        ev = NULL;
    }
    if (!ev) {
        cJSON_Delete(root);
        lk_emit_fail(e, r->id, "nomem", "status: out of memory");
        return;
    }
    ev->ok = 1;
    ev->list = 1;
    ev->revision = lk_etcd_revision(root);
    const cJSON *item;
    lk_kv kv = {0};
    cJSON_ArrayForEach(item, kvs) {
        if (lk_etcd_kv(item, &kv)) continue;
        lk_event_kv *o = &ev->kvs[ev->n_kvs++];
        o->key = take_buf(&kv.key, &o->key_len);
        o->value = take_buf(&kv.value, &o->value_len);
        o->create_rev = kv.create_rev;
        o->lease = kv.lease;
    }
    lk_etcd_kv_free(&kv);
    cJSON_Delete(root);
    lk_emit(e, ev);
}

static void list_command(lk_engine *e, lk_cmd *c)
{
    lk_buf body = {0};
    lk_req *r = NULL;
    if (lk_etcd_dir_body(&body, (lk_bytes){e->cfg.prefix, e->cfg.prefix_len}) ||
        !(r = lk_send(e, LK_PATH_RANGE, on_list, e, &body, 0))) {
        lk_buf_free(&body);
        lk_emit_fail(e, c->id, "nomem", "status: out of memory");
        return;
    }
    r->id = c->id;
}

void lk_lock_command(lk_engine *e, lk_cmd *c)
{
    switch (c->kind) {
    case LK_CMD_LOCK: lock_command(e, c); break;
    case LK_CMD_RELEASE: release_command(e, c); break;
    case LK_CMD_SET: set_command(e, c); break;
    case LK_CMD_GET: get_command(e, c); break;
    case LK_CMD_LIST: list_command(e, c); break;
    default: lk_emit_fail(e, c->id, "protocol", "unknown command"); break;
    }
    lk_cmd_free(c);
}

/* ---- session-wide transitions ---- */

void lk_locks_session_ready(lk_engine *e)
{
    for (lk_lock *l = e->locks, *next; l; l = next) {
        next = l->next;
        if (l->state == LS_SESSION) {
            start_acquire(e, l);
        } else if (l->resync) {  /* the new stream covers what comes next */
            l->resync = 0;
            if (l->state == LS_WAITING || l->state == LS_HELD) check(e, l);
            else if (l->state == LS_CHECK) l->recheck = 1;
        }
    }
}

void lk_locks_session_failed(lk_engine *e, const char *code, const char *msg)
{
    for (lk_lock *l = e->locks, *next; l; l = next) {
        next = l->next;
        if (l->state == LS_SESSION && !l->reported && !l->background) {
            report_fail(e, l, code, msg);
            start_delete(e, l);  /* an earlier try may have left a key */
        }
    }
}

void lk_locks_lease_lost(lk_engine *e, const char *why)
{
    for (lk_lock *l = e->locks, *next; l; l = next) {
        next = l->next;
        if (!l->lease) continue;
        cancel_req(l);
        l->lease = 0;  /* its key went with the lease */
        if (l->state == LS_DELETE) {
            finish(e, l);
            continue;
        }
        set_owned(e, l, 0, "lease_lost", why);
        if (l->keep) {
            start_acquire(e, l);  /* waits for the new lease */
        } else {
            report_fail(e, l, "lease_lost", why);
            finish(e, l);
        }
    }
}

void lk_locks_jeopardy(lk_engine *e)
{
    static const char why[] = "session lease not renewed in time";
    for (lk_lock *l = e->locks, *next; l; l = next) {
        next = l->next;
        if (l->state != LS_HELD) continue;
        set_owned(e, l, 0, "lease_lost", why);
        if (l->keep) l->state = LS_JEOPARDY;
        else start_delete(e, l);
    }
}

void lk_locks_renewed(lk_engine *e)
{
    for (lk_lock *l = e->locks, *next; l; l = next) {
        next = l->next;
        if (l->state == LS_JEOPARDY) check(e, l);
    }
}

void lk_locks_resync(lk_engine *e)
{
    /* events were lost; a check now could miss a deletion that happens
     * before the new stream starts: check once it has */
    for (lk_lock *l = e->locks; l; l = l->next)
        if (l->state == LS_WAITING || l->state == LS_HELD || l->state == LS_CHECK)
            l->resync = 1;
}

void lk_locks_deleted(lk_engine *e, const char *name, size_t name_len,
                      const char *key, size_t len)
{
    lk_lock *l = lk_map_get(&e->locks_by_name, name, name_len);
    if (!l || l->state == LS_DELETE) return;
    int mine = l->lease && len == l->key.len && !memcmp(key, l->key.data, len);
    if (l->state == LS_CHECK) {
        l->recheck = 1;
    } else if (mine && (l->state == LS_WAITING || l->state == LS_HELD ||
                        l->state == LS_JEOPARDY)) {
        lost_key(e, l, "its key was deleted by someone else");
    } else if (l->state == LS_WAITING && len == l->pred.len &&
               !memcmp(key, l->pred.data, len)) {
        check(e, l);
    }
}

int64_t lk_locks_tick(lk_engine *e, int64_t now)
{
    if (!e->lock_tick_at || now < e->lock_tick_at) return e->lock_tick_at;
    e->lock_tick_at = 0;
    for (lk_lock *l = e->locks, *next; l; l = next) {
        next = l->next;
        if (l->deadline && !l->reported) {
            if (now >= l->deadline) {
                report_fail(e, l, "timeout", "timed out waiting for the lock");
                l->keep = 0;
                start_delete(e, l);
                continue;
            }
            wake_at(e, l->deadline);
        }
        if (l->retry_at && !l->req &&
            (l->state == LS_RETRY || l->state == LS_DELETE)) {
            if (now >= l->retry_at) {
                l->retry_at = 0;
                if (l->state == LS_RETRY) start_acquire(e, l);
                else start_delete(e, l);
            } else {
                wake_at(e, l->retry_at);
            }
        }
    }
    return e->lock_tick_at;
}

void lk_locks_close(lk_engine *e)
{
    while (e->locks) {
        lk_lock *l = e->locks;
        report_fail(e, l, "closed", "client closed");
        set_owned(e, l, 0, "closed", "client closed");
        l->lease = 0;
        finish(e, l);
    }
}
