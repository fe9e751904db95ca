/* The latest owner value of every watched name, written by the engine and
 * read by the Lua thread without I/O (client:cached). A mutex guards the
 * map; values are immutable refcounted blobs, so a reader copies nothing
 * under the mutex and never holds it while Lua may raise. */
#ifndef LK_CACHE_H
#define LK_CACHE_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "base/map.h"

typedef struct lk_blob {
    int refs;
    size_t len;
    char data[];
} lk_blob;

lk_blob *lk_blob_new(const char *p, size_t n);   /* NULL: no memory */
lk_blob *lk_blob_ref(lk_blob *b);                /* any thread; NULL ok */
void lk_blob_unref(lk_blob *b);                  /* any thread */

typedef enum {
    LK_CACHE_NOT_WATCHED,   /* nobody watches the name */
    LK_CACHE_PENDING,       /* watched; first answer not in yet */
    LK_CACHE_GONE,          /* nobody holds it */
    LK_CACHE_HELD           /* value, token, revision valid */
} lk_cache_state;

typedef struct lk_cache {
    pthread_mutex_t mu;
    lk_map entries;         /* name -> struct entry */
} lk_cache;

int lk_cache_init(lk_cache *c);
void lk_cache_destroy(lk_cache *c);

/* Lua thread, when a watch starts (the name is PENDING at once, so
 * cached() never says "not watched" for a name being watched) and ends. */
void lk_cache_watch(lk_cache *c, const char *name, size_t len);
void lk_cache_forget(lk_cache *c, const char *name, size_t len);

/* Engine thread: the owner's value changed. Takes its own reference to
 * value (NULL: nobody holds it). */
void lk_cache_set(lk_cache *c, const char *name, size_t len, lk_blob *value,
                  int64_t token, int64_t revision);

/* Lua thread. On HELD, *value holds a reference the caller drops. */
lk_cache_state lk_cache_get(lk_cache *c, const char *name, size_t len,
                            lk_blob **value, int64_t *token,
                            int64_t *revision);

#endif
