/* Locks: etcd's concurrency layout (a contender key per lease under
 * prefix NAME "/", owner = lowest create_revision), one state machine per
 * lock, driven by request answers, the session's stream and timers. Above
 * the session (reads its state), below the engine loop (which routes the
 * session's news here). Engine thread only. */
#ifndef LK_LOCK_H
#define LK_LOCK_H

#include "engine/io.h"
#include "base/map.h"
#include "engine/session.h"

typedef struct lk_lock lk_lock;
typedef struct lk_cleanup lk_cleanup;

typedef struct lk_locks {
    lk_io *io;
    lk_session *session;
    lk_map by_name;            /* name -> the lock active on it here */
    lk_map by_id;              /* id (8 bytes) -> lock */
    lk_map cleaning;           /* name -> stray keys being deleted (count) */
    lk_cleanup *cleanups;      /* those deletions */
    lk_lock *all;              /* every lock, for session-wide news */
    int64_t tick_at;           /* when timers need a look; 0: never */
    int stopping;
} lk_locks;

void lk_locks_init(lk_locks *ls, lk_io *io, lk_session *session);
void lk_locks_command(lk_locks *ls, lk_cmd *c);   /* LOCK, SET, RELEASE */
int lk_locks_any(const lk_locks *ls);

/* The session's news. */
void lk_locks_session_ready(lk_locks *ls);
void lk_locks_session_failed(lk_locks *ls, lk_err code, const char *msg);
void lk_locks_lease_lost(lk_locks *ls, const char *why);
void lk_locks_renewed(lk_locks *ls);
void lk_locks_expired(lk_locks *ls);
void lk_locks_resync(lk_locks *ls);
void lk_locks_changed(lk_locks *ls, const lk_change *c);

int64_t lk_locks_tick(lk_locks *ls, int64_t now);  /* next deadline */
void lk_locks_close(lk_locks *ls);

#endif
