/* Watches: the owner's value of a name, followed through the session's one
 * stream and published to the cache. Above the session, below the engine
 * loop. Engine thread only. */
#ifndef LK_WATCH_H
#define LK_WATCH_H

#include "engine/cache.h"
#include "engine/io.h"
#include "base/map.h"
#include "engine/session.h"

typedef struct lk_watch lk_watch;

typedef struct lk_watches {
    lk_io *io;
    lk_session *session;
    lk_cache *cache;
    lk_map by_name;            /* name -> lk_watch */
    int64_t tick_at;
    int sync_due;              /* watches wait for their first read */
    lk_req *batch;             /* one read of the whole prefix, for many */
    lk_req *single;            /* or one read of one name */
    int64_t batch_rev;
    uint64_t all_id;           /* watch_all's subscription; 0: none */
    int all_discover;          /* it needs a read of the whole prefix */
    int batch_discovers;       /* the batch in flight is that read */
    int all_after_gap;         /* that read follows a gap (resync) */
    int batch_after_gap;
    int all_failures;          /* that read failed in a row (backoff) */
    int64_t all_retry_at;
    int sweep_due;             /* watches only watch_all wanted may go */
} lk_watches;

void lk_watches_init(lk_watches *ws, lk_io *io, lk_session *session,
                     lk_cache *cache);
void lk_watches_command(lk_watches *ws, lk_cmd *c);   /* (UN)WATCH(_ALL) */
int lk_watches_any(const lk_watches *ws);
void lk_watches_changed(lk_watches *ws, const lk_change *c);
void lk_watches_stream_ready(lk_watches *ws);
void lk_watches_resync(lk_watches *ws);
int64_t lk_watches_tick(lk_watches *ws, int64_t now);
void lk_watches_close(lk_watches *ws);

#endif
