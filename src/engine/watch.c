/* Watches: the owner's value of a name, followed through the session's one
 * watch stream (fanned out here by name) and published to the cache. Each
 * watched name keeps its contenders (key, value, create_revision) so that
 * every owner change is known from the stream alone: a new owner, a set by
 * the owner, the owner's key going. Waiter churn changes nothing visible.
 *
 * A watch of every name (watch_all) is the same watches, one per name that
 * has contenders: found by a read of the whole prefix when it starts (and
 * after a gap), and by the stream's first change of a name not followed
 * yet (that name is then read, as a new watch is). A name followed only
 * for watch_all is dropped once it reported "gone". */
#include "engine/watch.h"

#include "engine/keys.h"

#include <stdio.h>

#include <stdlib.h>
#include <string.h>

static void discover(lk_watches *ws);

#define RETRY_MIN_MS 100
#define RETRY_MAX_MS 2000

typedef struct contender {
    lk_buf key;
    lk_blob *value;
    int64_t create_rev;
} contender;

typedef struct change {
    int deleted;
    lk_kv kv;
} change;

typedef enum {
    WS_NEED_SYNC,   /* wants a snapshot once the stream is ready */
    WS_SYNCING,     /* snapshot (range) in flight; stream changes buffered */
    WS_LIVE         /* following the stream */
} watch_state;

struct lk_watch {
    lk_watches *ws;
    uint64_t id;             /* events carry it */
    watch_state state;
    lk_buf name, dir;
    lk_req *req;
    int64_t retry_at;
    contender *cs;
    size_t n, cap;
    int64_t applied;         /* revision the contenders reflect */
    int counted;             /* in the watched-names gauge */
    change *pending;         /* seen while SYNCING */
    size_t n_pending, cap_pending;
    int batched;             /* SYNCING through the engine's batch read */
    int reported;            /* first event sent */
    int resync;              /* next event follows a resync */
    int failures;            /* reads failed in a row (backoff) */
    lk_buf owner_key;        /* as last reported */
    lk_blob *owner_value;    /* NULL: gone */
    int in_all;              /* reported to watch_all too (id 0: only there) */
    int all_held;            /* watch_all was last told it is held */
};

static void clear_contenders(lk_watch *w)
{
    for (size_t i = 0; i < w->n; i++) {
        lk_buf_free(&w->cs[i].key);
        lk_blob_unref(w->cs[i].value);
    }
    w->n = 0;
}

static void clear_pending(lk_watch *w)
{
    for (size_t i = 0; i < w->n_pending; i++) lk_etcd_kv_free(&w->pending[i].kv);
    w->n_pending = 0;
}

static void free_watch(lk_watch *w)
{
    if (w->req && w->req == w->ws->single) {  /* let others go */
        w->ws->single = NULL;
        w->ws->sync_due = 1;
    }
    if (w->req) lk_req_cancel(w->req);
    if (w->counted) lk_metric_add(&w->ws->io->metrics.watches, -1);
    clear_contenders(w);
    clear_pending(w);
    free(w->cs);
    free(w->pending);
    lk_buf_free(&w->name);
    lk_buf_free(&w->dir);
    lk_buf_free(&w->owner_key);
    lk_blob_unref(w->owner_value);
    free(w);
}

/* A new watch of name, not yet read (start_sync reads it); NULL when out
 * of memory. */
static lk_watch *new_watch(lk_watches *ws, const char *name, size_t len)
{
    lk_watch *w = calloc(1, sizeof *w);
    if (w) w->ws = ws;
    if (!w || lk_buf_append(&w->name, name, len) ||
        lk_key_dir(&w->dir, (lk_bytes){ws->io->cfg.prefix, ws->io->cfg.prefix_len},
                   (lk_bytes){name, len}) ||
        lk_map_put(&ws->by_name, name, len, w)) {
        if (w) free_watch(w);
        return NULL;
    }
    w->counted = 1;
    lk_metric_add(&ws->io->metrics.watches, 1);
    return w;
}

static contender *find(lk_watch *w, const char *key, size_t len)
{
    for (size_t i = 0; i < w->n; i++)
        if (w->cs[i].key.len == len && !memcmp(w->cs[i].key.data, key, len))
            return &w->cs[i];
    return NULL;
}

/* Applies one change to the contender set. 0, or -1 (no memory). */
static int apply(lk_watch *w, int deleted, const lk_kv *kv)
{
    contender *c = find(w, kv->key.data, kv->key.len);
    if (deleted) {
        if (c) {
            lk_buf_free(&c->key);
            lk_blob_unref(c->value);
            *c = w->cs[--w->n];
        }
        return 0;
    }
    lk_blob *v = lk_blob_new(kv->value.data, kv->value.len);
    if (!v) return -1;
    if (c) {  /* a set by the contender: its create_revision stays. A put
               * with another one is the key made anew, its deletion unseen
               * (lost by whatever carried the stream): etcd's word counts */
        lk_blob_unref(c->value);
        c->value = v;
        if (kv->create_rev > 0) c->create_rev = kv->create_rev;
        return 0;
    }
    if (w->n == w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 4;
        contender *cs = realloc(w->cs, cap * sizeof *cs);
        if (!cs) {
            lk_blob_unref(v);
            return -1;
        }
        w->cs = cs;
        w->cap = cap;
    }
    c = &w->cs[w->n++];
    memset(c, 0, sizeof *c);
    c->value = v;
    c->create_rev = kv->create_rev;
    return lk_buf_append(&c->key, kv->key.data, kv->key.len);
}

static const contender *owner(const lk_watch *w)
{
    const contender *o = NULL;
    for (size_t i = 0; i < w->n; i++)
        if (!o || w->cs[i].create_rev < o->create_rev) o = &w->cs[i];
    return o;
}

static int same_blob(const lk_blob *a, const lk_blob *b)
{
    if (!a || !b) return a == b;
    return a->len == b->len && !memcmp(a->data, b->data, a->len);
}

/* Tells subscription id the state last reported (with the name: for
 * watch_all). */
static void emit_state(lk_watches *ws, const lk_watch *w, uint64_t id, int named)
{
    const lk_blob *value = w->owner_value;
    const contender *o = owner(w);
    lk_event *ev = lk_event_new(LK_EV_WATCH, id);
    if (!ev) return;
    ev->ok = 1;
    ev->revision = w->applied;
    ev->made_us = lk_now_us();  /* as the answer or stream frame is read */
    ev->token = o && value ? o->create_rev : 0;
    ev->resync = w->resync;
    if (value) {
        ev->has_value = 1;
        ev->value = malloc(value->len + 1);
        if (ev->value) {
            memcpy(ev->value, value->data, value->len + 1);
            ev->value_len = value->len;
        }
    }
    if (named && (ev->name = malloc(w->name.len + 1))) {
        memcpy(ev->name, w->name.data, w->name.len);
        ev->name[w->name.len] = '\0';
        ev->name_len = w->name.len;
    }
    lk_emit(ws->io, ev);
}

/* watch_all hears of a name while it is held, and once when it is gone. */
static void tell_all(lk_watches *ws, lk_watch *w)
{
    if (!w->owner_value && !w->all_held) return;  /* never held, for it */
    emit_state(ws, w, ws->all_id, 1);
    w->all_held = w->owner_value != NULL;
}

/* Emits an event and updates the cache when the owner or its value changed
 * (always for the first event and after a resync). */
static void report(lk_watches *ws, lk_watch *w)
{
    const contender *o = owner(w);
    lk_blob *value = o ? o->value : NULL;
    int same_key = o ? (w->owner_key.len == o->key.len &&
                        !memcmp(w->owner_key.data, o->key.data, o->key.len))
                     : w->owner_key.len == 0;
    if (w->reported && !w->resync && same_key && same_blob(w->owner_value, value))
        return;
    lk_buf_reset(&w->owner_key);
    if (o) lk_buf_append(&w->owner_key, o->key.data, o->key.len);
    lk_blob_unref(w->owner_value);
    w->owner_value = value;
    lk_blob_ref(value);
    int64_t token = o ? o->create_rev : 0;
    lk_cache_set(ws->cache, w->name.data, w->name.len, value, token, w->applied);
    if (w->id) emit_state(ws, w, w->id, 0);
    if (w->in_all && ws->all_id) tell_all(ws, w);
    w->reported = 1;
    w->resync = 0;
    if (!value && !w->id) ws->sweep_due = 1;  /* only watch_all had it: drop */
}

static void retry_later(lk_watches *ws, lk_watch *w)
{
    w->state = WS_NEED_SYNC;
    w->failures++;
    w->retry_at = lk_now_ms() + lk_backoff_ms(w->failures, RETRY_MIN_MS, RETRY_MAX_MS);
    if (!ws->tick_at || w->retry_at < ws->tick_at)
        ws->tick_at = w->retry_at;
}

/* The snapshot is in w's contenders at revision rev: catch up with what
 * the stream showed meanwhile, go live, tell. */
static void snapshot_done(lk_watches *ws, lk_watch *w, int64_t rev)
{
    w->failures = 0;
    w->applied = rev;
    w->batched = 0;
    for (size_t i = 0; i < w->n_pending; i++) {
        change *c = &w->pending[i];
        if (c->kv.mod_rev <= w->applied) continue;
        apply(w, c->deleted, &c->kv);
        w->applied = c->kv.mod_rev;
    }
    clear_pending(w);
    w->state = WS_LIVE;
    report(ws, w);
}

/* A snapshot read's answer: 0, or -1 when it failed or cannot be read
 * (then the watches read again later). */
static int snapshot_answer(lk_req *r, lk_range_resp *range)
{
    lk_err code;
    char msg[LK_MSG_SIZE];
    if (lk_answer_range(r, range, &code, msg, sizeof msg)) return -1;
    if (range->revision <= 0) {
        lk_range_resp_free(range);
        return -1;
    }
    return 0;
}

static void on_snapshot(lk_req *r)
{
    lk_watch *w = r->owner;
    lk_watches *ws = w->ws;
    w->req = NULL;
    ws->single = NULL;
    ws->sync_due = 1;  /* others may have queued up meanwhile */
    lk_range_resp range;
    if (snapshot_answer(r, &range)) {
        clear_pending(w);
        retry_later(ws, w);
        return;
    }
    clear_contenders(w);
    for (size_t i = 0; i < range.n; i++) apply(w, 0, &range.kvs[i]);
    int64_t rev = range.revision;
    lk_range_resp_free(&range);
    snapshot_done(ws, w, rev);
}

/* Calls fn on every watch. fn must not remove watches. */
static void each_watch(lk_watches *ws, void (*fn)(lk_watches *, lk_watch *))
{
    lk_map *m = &ws->by_name;
    for (size_t i = 0; i < m->n_slots; i++)
        for (lk_map_entry *en = m->slots[i]; en; en = en->next) fn(ws, en->value);
}

static void batch_failed(lk_watches *ws, lk_watch *w)
{
    if (!w->batched) return;
    w->batched = 0;
    clear_pending(w);
    retry_later(ws, w);
}

static void batch_clear(lk_watches *ws, lk_watch *w)
{
    (void)ws;
    if (w->batched) clear_contenders(w);
}

static void batch_done(lk_watches *ws, lk_watch *w)
{
    if (w->batched) snapshot_done(ws, w, ws->batch_rev);
}

/* The answer of one read of the whole prefix, for every batched watch. */
static void on_batch(lk_req *r)
{
    lk_watches *ws = r->owner;
    ws->batch = NULL;
    ws->sync_due = 1;  /* others may have queued up meanwhile */
    lk_range_resp range;
    int failed = snapshot_answer(r, &range);
    int discovers = ws->batch_discovers && ws->all_id;
    ws->batch_discovers = 0;
    if (failed) {
        each_watch(ws, batch_failed);
        if (discovers) {  /* again, after a pause (as a watch's read) */
            ws->all_after_gap |= ws->batch_after_gap;
            ws->all_failures++;
            ws->all_retry_at = lk_now_ms() +
                lk_backoff_ms(ws->all_failures, RETRY_MIN_MS, RETRY_MAX_MS);
            if (!ws->tick_at || ws->all_retry_at < ws->tick_at) ws->tick_at = ws->all_retry_at;
        }
        return;
    }
    if (discovers) ws->all_failures = 0;
    each_watch(ws, batch_clear);
    size_t plen = ws->io->cfg.prefix_len;
    for (size_t i = 0; i < range.n; i++) {
        lk_kv *kv = &range.kvs[i];
        lk_bytes name;
        if (!lk_key_name((lk_bytes){kv->key.data, kv->key.len}, plen, &name))
            continue;
        lk_watch *w = lk_map_get(&ws->by_name, name.p, name.n);
        if (!w && discovers && (w = new_watch(ws, name.p, name.n))) {
            w->in_all = 1;  /* found: read by this very answer */
            w->state = WS_SYNCING;
            w->batched = 1;
            w->resync = ws->batch_after_gap;  /* its history may be missing */
        }
        if (w && w->batched) apply(w, 0, kv);
    }
    ws->batch_rev = range.revision;
    lk_range_resp_free(&range);
    each_watch(ws, batch_done);
}

/* Reads every contender of the name; the stream must already be ready so
 * that every later change reaches us through it. Many names at once are
 * read together (see sync_waiting). */
static void start_sync(lk_watches *ws, lk_watch *w)
{
    w->retry_at = 0;
    w->state = WS_NEED_SYNC;
    if (!ws->session->stream_ready) {
        lk_session_need_stream(ws->session);
        return;
    }
    ws->sync_due = 1;
}

/* One read of one name. */
static void sync_one(lk_watches *ws, lk_watch *w)
{
    lk_range_req q = lk_recipe_dir((lk_bytes){w->dir.data, w->dir.len});
    clear_pending(w);
    w->state = WS_SYNCING;
    w->req = lk_send_range(ws->io, &q, on_snapshot, w, 0, 0);
    ws->single = w->req;
    if (!w->req) retry_later(ws, w);
}

/* watch_all wants to know every name: the next read is of the whole
 * prefix, once the stream is ready (names it finds become watches). */
static void discover(lk_watches *ws)
{
    ws->all_discover = 1;
    ws->sync_due = 1;
    if (!ws->session->stream_ready) lk_session_need_stream(ws->session);
}

static void join_batch(lk_watches *ws, lk_watch *w)
{
    (void)ws;
    if (w->state != WS_NEED_SYNC || w->retry_at) return;
    clear_pending(w);
    w->state = WS_SYNCING;
    w->batched = 1;
}

/* Snapshots for the watches that wait for one, one read at a time: a
 * single name is read alone; two or more with one read of the whole
 * prefix, so that a thousand new watches cost a request or two, not a
 * thousand requests on as many connections. */
static void sync_waiting(lk_watches *ws)
{
    if (!ws->session->stream_ready || ws->batch || ws->single) return;
    ws->sync_due = 0;  /* the reads in flight set it again when done */
    lk_watch *first = NULL;
    size_t n_waiting = 0;
    lk_map *m = &ws->by_name;
    for (size_t i = 0; i < m->n_slots && n_waiting < 2; i++)
        for (lk_map_entry *en = m->slots[i]; en && n_waiting < 2; en = en->next) {
            lk_watch *w = en->value;
            if (w->state == WS_NEED_SYNC && !w->retry_at) {
                if (!first) first = w;
                n_waiting++;
            }
        }
    if (n_waiting == 0 && !ws->all_discover) return;
    if (n_waiting == 1 && !ws->all_discover) {
        sync_one(ws, first);
        return;
    }
    lk_range_req q = lk_recipe_dir((lk_bytes){ws->io->cfg.prefix, ws->io->cfg.prefix_len});
    if (!(ws->batch = lk_send_range(ws->io, &q, on_batch, ws, 0, 0))) {
        ws->sync_due = 1;  /* try again on the next turn */
        return;
    }
    ws->batch_discovers = ws->all_discover;
    ws->batch_after_gap = ws->all_after_gap;
    ws->all_discover = ws->all_after_gap = 0;
    each_watch(ws, join_batch);
}

static void watch_command(lk_watches *ws, lk_cmd *c)
{
    lk_watch *w = lk_map_get(&ws->by_name, c->name, c->name_len);
    if (w && w->id) {  /* one subscription per name; the binding fans out */
        lk_emit_fail(ws->io, c->id, LK_ERR_INTERNAL, "name is already watched");
        return;
    }
    if (w) {  /* followed for watch_all already: its state is known */
        w->id = c->id;
        if (w->reported) {
            lk_cache_set(ws->cache, w->name.data, w->name.len, w->owner_value,
                         owner(w) && w->owner_value ? owner(w)->create_rev : 0, w->applied);
            emit_state(ws, w, w->id, 0);
        }
        return;
    }
    if (!(w = new_watch(ws, c->name, c->name_len))) {
        lk_emit_fail(ws->io, c->id, LK_ERR_NOMEM, "watch: out of memory");
        return;
    }
    w->id = c->id;
    w->in_all = ws->all_id != 0;
    start_sync(ws, w);  /* the binding already marked the name in the cache */
}

static void unwatch_command(lk_watches *ws, lk_cmd *c)
{
    lk_watch *w = lk_map_get(&ws->by_name, c->name, c->name_len);
    if (w && w->in_all && ws->all_id) {
        w->id = 0;  /* watch_all still follows it */
        if (w->reported && !w->owner_value) ws->sweep_due = 1;
    } else if (w) {
        lk_map_del(&ws->by_name, c->name, c->name_len);
        free_watch(w);  /* the binding already dropped it from the cache */
    }
    lk_emit_ok(ws->io, c->id);
}

static void join_all(lk_watches *ws, lk_watch *w)
{
    w->in_all = 1;
    w->all_held = 0;
    if (w->reported) tell_all(ws, w);
}

static void watch_all_command(lk_watches *ws, lk_cmd *c)
{
    if (ws->all_id) {
        lk_emit_fail(ws->io, c->id, LK_ERR_INTERNAL, "every name is already watched");
        return;
    }
    ws->all_id = c->id;
    each_watch(ws, join_all);  /* what is known already, at once */
    discover(ws);
}

/* Drops the watches that only watch_all wanted and that have nothing to
 * report (gone), or all of them when watch_all ends. */
static void sweep(lk_watches *ws)
{
    ws->sweep_due = 0;
    lk_map *m = &ws->by_name;
    for (size_t i = 0; i < m->n_slots; i++) {
        lk_map_entry *en = m->slots[i];
        while (en) {
            lk_watch *w = en->value;
            en = en->next;  /* before w's entry may go */
            if (w->id) continue;
            if (ws->all_id && !(w->state == WS_LIVE && w->reported && !w->owner_value))
                continue;
            lk_map_del(m, w->name.data, w->name.len);
            free_watch(w);
        }
    }
}

static void unwatch_all_command(lk_watches *ws, lk_cmd *c)
{
    ws->all_id = 0;
    ws->all_discover = 0;
    lk_map *m = &ws->by_name;
    for (size_t i = 0; i < m->n_slots; i++)
        for (lk_map_entry *en = m->slots[i]; en; en = en->next)
            ((lk_watch *)en->value)->in_all = 0;
    sweep(ws);
    lk_emit_ok(ws->io, c->id);
}

void lk_watches_command(lk_watches *ws, lk_cmd *c)
{
    switch (c->kind) {
    case LK_CMD_WATCH: watch_command(ws, c); break;
    case LK_CMD_WATCH_ALL: watch_all_command(ws, c); break;
    case LK_CMD_UNWATCH_ALL: unwatch_all_command(ws, c); break;
    default: unwatch_command(ws, c); break;
    }
    lk_cmd_free(c);
}

static int push_pending(lk_watch *w, int deleted, const lk_kv *kv)
{
    if (w->n_pending == w->cap_pending) {
        size_t cap = w->cap_pending ? w->cap_pending * 2 : 4;
        change *p = realloc(w->pending, cap * sizeof *p);
        if (!p) return -1;
        w->pending = p;
        w->cap_pending = cap;
    }
    change *c = &w->pending[w->n_pending++];
    memset(c, 0, sizeof *c);
    c->deleted = deleted;
    c->kv.create_rev = kv->create_rev;
    c->kv.mod_rev = kv->mod_rev;
    return lk_buf_append(&c->kv.key, kv->key.data, kv->key.len) ||
           lk_buf_append(&c->kv.value, kv->value.data, kv->value.len);
}

void lk_watches_changed(lk_watches *ws, const lk_change *ch)
{
    if (ch->marker) return;  /* a lock's business, no contender */
    int deleted = ch->deleted;
    const lk_kv *kv = ch->kv;
    lk_watch *w = lk_map_get(&ws->by_name, ch->name, ch->name_len);
    if (!w && ws->all_id && !deleted && (w = new_watch(ws, ch->name, ch->name_len))) {
        w->in_all = 1;  /* a name watch_all did not know: read it (its read
                           is newer than this change) */
        start_sync(ws, w);
        return;
    }
    if (!w) return;
    if (w->state == WS_SYNCING) {
        if (push_pending(w, deleted, kv)) {  /* cannot buffer: read again */
            if (w->req && w->req == ws->single) {
                ws->single = NULL;
                ws->sync_due = 1;
            }
            if (w->req) lk_req_cancel(w->req);
            w->req = NULL;
            w->batched = 0;
            clear_pending(w);
            retry_later(ws, w);
        }
        return;
    }
    if (w->state != WS_LIVE || kv->mod_rev <= w->applied) return;  /* seen */
    if (apply(w, deleted, kv)) {
        retry_later(ws, w);
        return;
    }
    w->applied = kv->mod_rev;
    report(ws, w);
}

void lk_watches_stream_ready(lk_watches *ws)
{
    ws->sync_due = 1;
}

void lk_watches_resync(lk_watches *ws)
{
    if (ws->batch) lk_req_cancel(ws->batch);
    ws->batch = ws->single = NULL;
    lk_map *m = &ws->by_name;
    for (size_t i = 0; i < m->n_slots; i++)
        for (lk_map_entry *en = m->slots[i]; en; en = en->next) {
            lk_watch *w = en->value;
            if (w->req) lk_req_cancel(w->req);
            w->req = NULL;
            clear_pending(w);
            w->state = WS_NEED_SYNC;
            w->retry_at = 0;
            w->batched = 0;
            w->resync = 1;
        }
    if (ws->all_id) {  /* names that appeared in the gap */
        discover(ws);
        ws->all_after_gap = 1;
    }
}

int64_t lk_watches_tick(lk_watches *ws, int64_t now)
{
    if (ws->tick_at && now >= ws->tick_at) {
        ws->tick_at = 0;
        lk_map *m = &ws->by_name;
        for (size_t i = 0; i < m->n_slots; i++)
            for (lk_map_entry *en = m->slots[i]; en; en = en->next) {
                lk_watch *w = en->value;
                if (!w->retry_at) continue;
                if (now >= w->retry_at) start_sync(ws, w);  /* read again */
                else if (!ws->tick_at || w->retry_at < ws->tick_at)
                    ws->tick_at = w->retry_at;
            }
    }
    if (ws->all_retry_at && now >= ws->all_retry_at) {
        ws->all_retry_at = 0;
        if (ws->all_id) discover(ws);
    } else if (ws->all_retry_at && (!ws->tick_at || ws->all_retry_at < ws->tick_at)) {
        ws->tick_at = ws->all_retry_at;
    }
    if (ws->sweep_due) sweep(ws);
    if (ws->sync_due) sync_waiting(ws);
    return ws->tick_at;
}

void lk_watches_init(lk_watches *ws, lk_io *io, lk_session *session,
                     lk_cache *cache)
{
    memset(ws, 0, sizeof *ws);
    ws->io = io;
    ws->session = session;
    ws->cache = cache;
}

int lk_watches_any(const lk_watches *ws)
{
    return ws->by_name.count > 0 || ws->all_id;
}

void lk_watches_close(lk_watches *ws)
{
    if (ws->batch) lk_req_cancel(ws->batch);
    ws->batch = ws->single = NULL;
    lk_map *m = &ws->by_name;
    for (size_t i = 0; i < m->n_slots; i++)
        for (lk_map_entry *en = m->slots[i]; en; en = en->next)
            free_watch(en->value);
    lk_map_free(m);
}
