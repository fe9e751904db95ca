/* The engine: one background thread per client that does every etcd call and
 * owns all timing (lease renewal, retries, lock waits). The Lua binding talks
 * to it only through this interface: commands in, events out. */
#ifndef LK_ENGINE_H
#define LK_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "base/config.h"
#include "base/metrics.h"
#include "engine/msg.h"

typedef struct lk_engine lk_engine;

/* Copies cfg. Starts no thread (that happens on the first command). The
 * client belongs to the process that made it: used in another (after a
 * fork) it refuses. NULL with err filled. */
lk_engine *lk_engine_new(const lk_config *cfg, char *err, size_t err_size);

/* Whether the client was made in another process (before a fork): every
 * use but close raises then (any thread). */
int lk_engine_foreign(const lk_engine *e);

/* The wake-up socket (wake.h), for loops that can only connect (nginx's
 * cosockets). listen returns the path to connect to (NULL, err filled);
 * once connected, accept hands the connection to the engine (0, or -1 with
 * err filled). Lua thread. */
const char *lk_engine_wake_listen(lk_engine *e, char *err, size_t err_size);
int lk_engine_wake_accept(lk_engine *e, char *err, size_t err_size);

/* Pollable fd: readable when events are waiting. */
int lk_engine_fd(const lk_engine *e);

/* Hands a command to the engine thread (starting it if needed); the engine
 * owns cmd afterwards in every case. 0, or -1 with err filled (closed, used
 * after fork, thread could not start). */
int lk_engine_submit(lk_engine *e, lk_cmd *cmd, char *err, size_t err_size);

/* Takes every waiting event (a list linked by next, oldest first) and clears
 * the fd's readiness. The caller frees them with lk_event_free. */
lk_event *lk_engine_take_events(lk_engine *e);

/* Stops the engine: pending operations fail with "closed", the session lease
 * is revoked (its keys vanish at once), the thread is joined. Idempotent;
 * blocks at most about the request timeout. Events stay readable after. */
void lk_engine_close(lk_engine *e);
int lk_engine_closed(const lk_engine *e);

/* Closes if needed, then frees. */
void lk_engine_free(lk_engine *e);

/* The watched names' cache (read with lk_cache_get from any thread). */
struct lk_cache *lk_engine_cache(lk_engine *e);

/* A snapshot of the counters (any thread). */
void lk_engine_stats(const lk_engine *e, lk_stats *out);
/* A copy of the metrics (metrics.h), read without disturbing the engine. */
void lk_engine_metrics(const lk_engine *e, lk_metrics *out);
/* The Lua thread has an event in hand: the delivery metrics (any thread). */
void lk_engine_delivered(lk_engine *e, const lk_event *ev);

/* The session lease ID, 0 when there is none (any thread). */
int64_t lk_engine_lease(const lk_engine *e);

/* The session's lease and its times as last published (any thread). */
void lk_engine_session(const lk_engine *e, lk_session_view *out);

/* Endpoint i of the client's list (any thread: the list never changes). */
const char *lk_engine_endpoint(const lk_engine *e, int i);

/* Process-wide library set-up (libcurl); call once, before any thread. */
void lk_engine_global_init(void);

/* Next request id (the Lua thread only calls this). */
uint64_t lk_engine_next_id(lk_engine *e);

#endif
