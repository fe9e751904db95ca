#include "engine/msg.h"

#include <pthread.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "base/map.h"

lk_cmd *lk_cmd_new(lk_cmd_kind kind)
{
    lk_cmd *c = calloc(1, sizeof *c);
    if (c) {
        c->kind = kind;
        c->timeout_ms = -1;
    }
    return c;
}

lk_event *lk_event_new(lk_event_kind kind, uint64_t id)
{
    lk_event *e = calloc(1, sizeof *e);
    if (e) {
        e->kind = kind;
        e->id = id;
    }
    return e;
}

void lk_cmd_free(lk_cmd *c)
{
    if (!c) return;
    free(c->name);
    free(c->value);
    lk_ownership_unref(c->ownership);
    free(c);
}

void lk_event_free(lk_event *e)
{
    if (!e) return;
    free(e->value);
    free(e->key);
    free(e->name);
    free(e->msg);
    for (size_t i = 0; i < e->n_kvs; i++) {
        free(e->kvs[i].key);
        free(e->kvs[i].value);
    }
    free(e->kvs);
    free(e);
}

struct link { struct link *next; };

struct lk_queue {
    pthread_mutex_t mu;
    struct link *head, *tail;
    size_t n;                  /* messages queued */
    lk_map latest;             /* (kind, id) -> its newest queued event */
};

lk_queue *lk_queue_new(void)
{
    lk_queue *q = calloc(1, sizeof *q);
    if (q && pthread_mutex_init(&q->mu, NULL)) {
        free(q);
        return NULL;
    }
    return q;
}

/* Takes the queue's mutex. */
int lk_queue_push(lk_queue *q, void *msg)
{
    struct link *m = msg;
    m->next = NULL;
    pthread_mutex_lock(&q->mu);
    int was_empty = q->head == NULL;
    if (q->tail) q->tail->next = m;
    else q->head = m;
    q->tail = m;
    q->n++;
    pthread_mutex_unlock(&q->mu);
    return was_empty;
}

/* Moves new's content into old (which keeps its place in the queue) and
 * frees new with old's former content. */
static void fold(lk_event *old, lk_event *new)
{
    lk_event tmp = *old;
    int skipped = old->skipped + 1 + new->skipped;
    int resync = old->resync || new->resync;
    *old = *new;
    old->next = tmp.next;
    old->skipped = skipped;
    old->resync = resync;
    tmp.next = NULL;
    *new = tmp;
    lk_event_free(new);
}

/* Takes the queue's mutex (the map is used under it alone). */
int lk_queue_push_latest(lk_queue *q, lk_event *ev)
{
    /* (kind, id, name): the events of a watch_all fold per name */
    struct { int kind; uint64_t id; char name[LK_FOLD_NAME]; } key;
    memset(&key, 0, sizeof key);
    key.kind = (int)ev->kind;
    key.id = ev->id;
    size_t name_len = ev->name_len < LK_FOLD_NAME ? ev->name_len : LK_FOLD_NAME;
    if (ev->name) memcpy(key.name, ev->name, name_len);
    size_t key_len = offsetof(__typeof__(key), name) + name_len;
    pthread_mutex_lock(&q->mu);
    lk_event *old = ev->name_len > LK_FOLD_NAME ? NULL  /* too long: never folded */
                  : lk_map_get(&q->latest, &key, key_len);
    /* nobody is taking them: fold; but a lock's loss is never folded over
     * (whoever owned must hear it lost, even if it owns again since) */
    int loss = old && old->kind == LK_EV_OWNED && !old->owned && old->code;
    if (old && !loss && q->n >= LK_FOLD_AFTER) {
        fold(old, ev);
        pthread_mutex_unlock(&q->mu);
        return 0;
    }
    struct link *m = (struct link *)ev;
    m->next = NULL;
    int was_empty = q->head == NULL;
    if (q->tail) q->tail->next = m;
    else q->head = m;
    q->tail = m;
    q->n++;
    /* no memory for the map entry: the event is queued, just not foldable */
    if (ev->name_len <= LK_FOLD_NAME) (void)lk_map_put(&q->latest, &key, key_len, ev);
    pthread_mutex_unlock(&q->mu);
    return was_empty;
}

/* Takes the queue's mutex; the caller owns the returned list. */
void *lk_queue_take_all(lk_queue *q)
{
    pthread_mutex_lock(&q->mu);
    struct link *all = q->head;
    q->head = q->tail = NULL;
    q->n = 0;
    if (q->latest.count) {
        lk_map_free(&q->latest);
        memset(&q->latest, 0, sizeof q->latest);
    }
    pthread_mutex_unlock(&q->mu);
    return all;
}

void lk_queue_free(lk_queue *q, void (*free_msg)(void *))
{
    if (!q) return;
    struct link *m = q->head;
    while (m) {
        struct link *next = m->next;
        free_msg(m);
        m = next;
    }
    lk_map_free(&q->latest);
    pthread_mutex_destroy(&q->mu);
    free(q);
}
