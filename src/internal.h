/* What the engine's parts (engine.c, session.c, lock.c) share. Everything
 * below the "engine thread only" line is touched by the engine thread alone. */
#ifndef LK_INTERNAL_H
#define LK_INTERNAL_H

#include <pthread.h>
#include <stdint.h>
#include <sys/types.h>

#include <cJSON.h>

#include "buf.h"
#include "cache.h"
#include "engine.h"
#include "etcd.h"
#include "http.h"
#include "map.h"
#include "msg.h"

#define LK_MSG_SIZE 512

typedef struct lk_lock lk_lock;
typedef struct lk_watch lk_watch;

/* The session: one lease shared by every lock of the client, and one watch
 * stream on the client's prefix that tells waiters when to look again. */
typedef struct lk_session {
    int64_t lease;             /* 0: none */
    lk_req *lease_req;         /* grant or keepalive in flight */
    int64_t next_keepalive;    /* ms, monotonic */
    int64_t expires;           /* ms: the lease surely lives until then */
    int jeopardy;              /* expires passed without a confirmed renewal */
    int64_t grant_retry_at;    /* ms; 0: none planned */
    int grant_failures;
    lk_req *stream;            /* the watch stream, NULL when down */
    int stream_ready;          /* etcd confirmed the watch */
    int64_t stream_rev;        /* highest revision the stream has shown */
    int64_t stream_retry_at;
    int stream_failures;
    lk_req *revoke;            /* at close */
} lk_session;

struct lk_engine {
    lk_config cfg;
    /* shared with the Lua thread */
    lk_queue *commands;
    lk_queue *events;
    int event_fd;
    pid_t fd_pid;              /* process that made event_fd */
    pthread_t thread;
    int started;
    pid_t thread_pid;          /* process that started the thread */
    int closed;                /* Lua side: close() was called */
    uint64_t next_id;
    lk_cmd *close_cmd;         /* allocated up front: close() cannot fail */
    int64_t lease_seen;        /* session lease for lk_engine_lease (atomic) */
    lk_stats stats;            /* counters (atomics), read by lk_engine_stats */
    lk_cache cache;            /* watched names' owner values (own mutex) */
    int cache_ready;
    /* engine thread only (the multi handle is made just before the thread
     * starts and, but for curl_multi_wakeup, used by the thread alone) */
    lk_http *http;
    int stopping;              /* CLOSE received: finishing up */
    lk_session session;
    lk_map locks_by_name;      /* name -> the lock active on it in this client */
    lk_map locks_by_id;        /* id (8 bytes) -> lock */
    lk_lock *locks;            /* every lock, for lease-wide transitions */
    int64_t lock_tick_at;      /* when lock timers need a look; 0: never */
    lk_map watches;            /* name -> lk_watch */
    int64_t watch_tick_at;
    int watch_sync_due;        /* watches wait for their first read */
    lk_req *watch_batch;       /* one read of the whole prefix, for many */
    lk_req *watch_single;      /* or one read of one name */
    int64_t watch_batch_rev;
};

/* engine.c */
void lk_count(int64_t *counter);
int64_t lk_now_ms(void);
void lk_emit(lk_engine *e, lk_event *ev);
/* A result event for request id: ok, or failed with code and message. */
void lk_emit_ok(lk_engine *e, uint64_t id);
void lk_emit_fail(lk_engine *e, uint64_t id, const char *code,
                  const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/* Reads a finished request's answer: the parsed root object, or NULL with a
 * code ("unavailable", "lease_lost", "etcd", "protocol") and a message. */
cJSON *lk_answer(lk_req *r, const char **code, char *msg, size_t msg_size);
/* Starts a request, taking body over; timeout_ms 0 means the client's
 * request timeout. Returns the request, or NULL (nothing was sent). */
lk_req *lk_send(lk_engine *e, const char *path, lk_req_done_fn done,
                void *owner, lk_buf *body, int64_t timeout_ms);

/* session.c */
void lk_session_need(lk_engine *e);          /* lease + stream, soon */
void lk_session_need_stream(lk_engine *e);   /* the stream only */
int lk_session_ready(const lk_engine *e);
int64_t lk_session_tick(lk_engine *e, int64_t now);  /* next deadline */
void lk_session_lease_gone(lk_engine *e, const char *why);
void lk_session_stop(lk_engine *e);          /* close: revoke, end stream */
int lk_session_busy(const lk_engine *e);     /* revoke still in flight */

/* lock.c */
void lk_lock_command(lk_engine *e, lk_cmd *c);    /* LOCK, SET, RELEASE, GET */
void lk_locks_session_ready(lk_engine *e);
void lk_locks_session_failed(lk_engine *e, const char *code, const char *msg);
void lk_locks_lease_lost(lk_engine *e, const char *why);
void lk_locks_jeopardy(lk_engine *e);
void lk_locks_renewed(lk_engine *e);
void lk_locks_resync(lk_engine *e);
void lk_locks_deleted(lk_engine *e, const char *name, size_t name_len,
                      const char *key, size_t len);
int64_t lk_locks_tick(lk_engine *e, int64_t now);
void lk_locks_close(lk_engine *e);


/* watch.c */
void lk_watch_command(lk_engine *e, lk_cmd *c);   /* WATCH, UNWATCH */
void lk_watches_changed(lk_engine *e, const char *name, size_t len,
                        int deleted, const lk_kv *kv);
void lk_watches_stream_ready(lk_engine *e);
void lk_watches_resync(lk_engine *e);
int64_t lk_watches_tick(lk_engine *e, int64_t now);
void lk_watches_close(lk_engine *e);

#endif
