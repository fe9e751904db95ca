/* A lock's ownership as the engine last decided it, shared by the engine
 * (writer) and the Lua binding (reader) so that lock:owned() is true to the
 * engine even when Lua has not drained its events. Refcounted: one reference
 * per side; atomics make every field safe to read from the other thread. */
#ifndef LK_STATUS_H
#define LK_STATUS_H

#include <stdint.h>
#include <stdlib.h>

typedef struct lk_status {
    int refs;
    int owned;
    int64_t token;
} lk_status;

static inline lk_status *lk_status_new(void)
{
    lk_status *s = calloc(1, sizeof *s);
    if (s) s->refs = 1;
    return s;
}

static inline lk_status *lk_status_ref(lk_status *s)
{
    __atomic_add_fetch(&s->refs, 1, __ATOMIC_RELAXED);
    return s;
}

static inline void lk_status_unref(lk_status *s)
{
    if (s && __atomic_sub_fetch(&s->refs, 1, __ATOMIC_ACQ_REL) == 0) free(s);
}

static inline void lk_status_set(lk_status *s, int owned, int64_t token)
{
    __atomic_store_n(&s->token, token, __ATOMIC_RELEASE);
    __atomic_store_n(&s->owned, owned, __ATOMIC_RELEASE);
}

static inline int lk_status_owned(const lk_status *s)
{
    return __atomic_load_n(&s->owned, __ATOMIC_ACQUIRE);
}

static inline int64_t lk_status_token(const lk_status *s)
{
    return __atomic_load_n(&s->token, __ATOMIC_ACQUIRE);
}

#endif
