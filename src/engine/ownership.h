/* A lock's ownership as the engine last published it, shared by the engine
 * (writer) and the Lua binding (reader). Ownership is a deadline, not a
 * flag: the lock is owned while now < until, compared by the reader when it
 * asks, so the answer is right even when the engine thread has not run
 * (a frozen or suspended process, a busy machine). Refcounted: one
 * reference per side; atomics make every field safe to read from the
 * other thread. */
#ifndef LK_OWNERSHIP_H
#define LK_OWNERSHIP_H

#include <stdint.h>
#include <stdlib.h>

#include "base/clock.h"

typedef struct lk_ownership {
    int refs;
    int64_t until;             /* lk_now_ms clock; 0: not owned */
    int64_t token;
} lk_ownership;

static inline lk_ownership *lk_ownership_new(void)
{
    lk_ownership *s = calloc(1, sizeof *s);
    if (s) s->refs = 1;
    return s;
}

static inline lk_ownership *lk_ownership_ref(lk_ownership *s)
{
    __atomic_add_fetch(&s->refs, 1, __ATOMIC_RELAXED);
    return s;
}

static inline void lk_ownership_unref(lk_ownership *s)
{
    if (s && __atomic_sub_fetch(&s->refs, 1, __ATOMIC_ACQ_REL) == 0) free(s);
}

/* Engine thread. The token is stored first, so a reader that sees an
 * until also sees the token that goes with it. */
static inline void lk_ownership_set(lk_ownership *s, int64_t until, int64_t token)
{
    if (until) __atomic_store_n(&s->token, token, __ATOMIC_RELEASE);
    __atomic_store_n(&s->until, until, __ATOMIC_RELEASE);
}

/* Any thread: milliseconds of ownership left (0: not owned), and the
 * token while owned. */
static inline int64_t lk_ownership_left(const lk_ownership *s, int64_t *token)
{
    int64_t until = __atomic_load_n(&s->until, __ATOMIC_ACQUIRE);
    int64_t left = until ? until - lk_now_ms() : 0;
    if (left <= 0) return 0;
    if (token) *token = __atomic_load_n(&s->token, __ATOMIC_ACQUIRE);
    return left;
}

#endif
