#include "engine/cache.h"

#include <stdlib.h>
#include <string.h>

struct entry {
    lk_cache_state state;
    lk_blob *value;
    int64_t token;
    int64_t revision;
};

lk_blob *lk_blob_new(const char *p, size_t n)
{
    lk_blob *b = malloc(sizeof *b + n + 1);
    if (!b) return NULL;
    b->refs = 1;
    b->len = n;
    if (n) memcpy(b->data, p, n);
    b->data[n] = '\0';
    return b;
}

lk_blob *lk_blob_ref(lk_blob *b)
{
    if (b) __atomic_add_fetch(&b->refs, 1, __ATOMIC_RELAXED);
    return b;
}

void lk_blob_unref(lk_blob *b)
{
    if (b && __atomic_sub_fetch(&b->refs, 1, __ATOMIC_ACQ_REL) == 0) free(b);
}

int lk_cache_init(lk_cache *c)
{
    memset(&c->entries, 0, sizeof c->entries);
    return pthread_mutex_init(&c->mu, NULL) ? -1 : 0;
}

static void free_entries(lk_map *m)
{
    for (size_t i = 0; i < m->n_slots; i++)
        for (lk_map_entry *e = m->slots[i]; e; e = e->next) {
            struct entry *en = e->value;
            lk_blob_unref(en->value);
            free(en);
        }
    lk_map_free(m);
}

void lk_cache_destroy(lk_cache *c)
{
    free_entries(&c->entries);
    pthread_mutex_destroy(&c->mu);
}

/* Takes the cache mutex. */
void lk_cache_watch(lk_cache *c, const char *name, size_t len)
{
    struct entry *en = calloc(1, sizeof *en);
    if (!en) return;
    en->state = LK_CACHE_PENDING;
    pthread_mutex_lock(&c->mu);
    struct entry *old = lk_map_get(&c->entries, name, len);
    if (old || lk_map_put(&c->entries, name, len, en)) free(en);
    pthread_mutex_unlock(&c->mu);
}

/* Takes the cache mutex; drops the old value's reference outside it. */
void lk_cache_set(lk_cache *c, const char *name, size_t len, lk_blob *value,
                  int64_t token, int64_t revision)
{
    lk_blob *old = NULL;
    pthread_mutex_lock(&c->mu);
    struct entry *en = lk_map_get(&c->entries, name, len);
    if (en) {
        old = en->value;
        en->value = lk_blob_ref(value);
        en->state = value ? LK_CACHE_HELD : LK_CACHE_GONE;
        en->token = value ? token : 0;
        en->revision = revision;
    }
    pthread_mutex_unlock(&c->mu);
    lk_blob_unref(old);
}

/* Takes the cache mutex. */
void lk_cache_forget(lk_cache *c, const char *name, size_t len)
{
    pthread_mutex_lock(&c->mu);
    struct entry *en = lk_map_del(&c->entries, name, len);
    pthread_mutex_unlock(&c->mu);
    if (en) {
        lk_blob_unref(en->value);
        free(en);
    }
}

/* Takes the cache mutex; returns a new reference to the value. */
lk_cache_state lk_cache_get(lk_cache *c, const char *name, size_t len,
                            lk_blob **value, int64_t *token,
                            int64_t *revision)
{
    lk_cache_state st = LK_CACHE_NOT_WATCHED;
    *value = NULL;
    pthread_mutex_lock(&c->mu);
    struct entry *en = lk_map_get(&c->entries, name, len);
    if (en) {
        st = en->state;
        *value = lk_blob_ref(en->value);
        *token = en->token;
        *revision = en->revision;
    }
    pthread_mutex_unlock(&c->mu);
    return st;
}
