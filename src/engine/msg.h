/* The plain C data that crosses the thread boundary: commands from the Lua
 * side to the engine, events from the engine back. Every pointer in a message
 * is owned by the message (deep copies, never references into Lua). */
#ifndef LK_MSG_H
#define LK_MSG_H

#include <stddef.h>
#include <stdint.h>

#include "base/errors.h"
#include "engine/ownership.h"

typedef enum {
    LK_CMD_LOCK,     /* name, value, timeout_ms, wait, keep, ownership */
    LK_CMD_SET,      /* target (lock id), value */
    LK_CMD_RELEASE,  /* target (lock id) */
    LK_CMD_GET,      /* name */
    LK_CMD_WATCH,    /* name: follow its owner's value (id names the events) */
    LK_CMD_UNWATCH,  /* name */
    LK_CMD_LIST,     /* every contender key under the prefix (status) */
    LK_CMD_PUT,      /* target (lock id), name (any key), value: guarded */
    LK_CMD_DELETE,   /* target (lock id), name (any key): guarded */
    LK_CMD_READ,     /* name (any key): its value and mod revision */
    LK_CMD_WATCH_ALL,   /* every name under the prefix (id names the events) */
    LK_CMD_UNWATCH_ALL,
    LK_CMD_CLOSE
} lk_cmd_kind;

/* A semaphore's largest limit (owners at once). */
#define LK_MAX_LIMIT 10000

typedef struct lk_cmd {
    struct lk_cmd *next;
    lk_cmd_kind kind;
    uint64_t id;          /* request id; a lock's id is its LOCK request id */
    uint64_t target;
    char *name;
    size_t name_len;
    char *value;
    size_t value_len;
    int64_t timeout_ms;   /* < 0: wait forever */
    int wait;
    int keep;
    int background;       /* LOCK: nobody waits for the answer; never give up */
    int limit;            /* LOCK: a semaphore's N; 0 or 1: a plain lock */
    lk_ownership *ownership; /* LOCK only: one reference owned by the command */
} lk_cmd;

typedef enum {
    LK_EV_RESULT,    /* the answer to request id: ok, or code + msg; value/token */
    LK_EV_OWNED,     /* lock id's ownership changed: owned, token, code + msg */
    LK_EV_WATCH,     /* watch id's owner value: value (has_value 0: gone),
                        token, revision, resync */
    LK_EV_NOTE       /* news of the engine (id 0): name = what happened
                        ("failover", "reconnect", "resync", "jeopardy",
                        "renewed_late"), key = the endpoint, msg = why */
} lk_event_kind;

/* One key-value of a LIST answer. */
typedef struct lk_event_kv {
    char *key;
    size_t key_len;
    size_t name_off, name_len;   /* the lock name within key */
    char *value;
    size_t value_len;
    int64_t create_rev;
    int64_t mod_rev;             /* its last write (a set by the owner) */
    int64_t lease;
    int limit_key;               /* a semaphore contender's limit (value: N) */
} lk_event_kv;

typedef struct lk_event {
    struct lk_event *next;
    lk_event_kind kind;
    uint64_t id;
    int ok;
    int owned;
    int has_value;
    char *value;
    size_t value_len;
    int64_t token;
    int64_t revision;
    int resync;          /* WATCH: state re-read after a gap (compaction) */
    char *key;           /* a lock's etcd key: when granted (RESULT of a
                            LOCK, OWNED with owned set) */
    size_t key_len;
    char *name;          /* WATCH of watch_all: the name it is about */
    size_t name_len;
    int64_t made_us;     /* WATCH: when the engine read it (lk_now_us);
                            the delivery metric ends where Lua gets it */
    int skipped;         /* WATCH, OWNED: older states of the same id folded
                            into this one while nobody took them */
    lk_err code;         /* LK_OK when ok (Lua sees lk_err_name) */
    char *msg;           /* for people; NULL when ok */
    int list;            /* a LIST result (kvs may be empty) */
    lk_event_kv *kvs;
    size_t n_kvs;
} lk_event;

/* Both return NULL when out of memory. */
lk_cmd *lk_cmd_new(lk_cmd_kind kind);
lk_event *lk_event_new(lk_event_kind kind, uint64_t id);
/* Free a message and everything it owns (drops the ownership reference). */
void lk_cmd_free(lk_cmd *c);
void lk_event_free(lk_event *e);

/* A mutex-protected FIFO of messages (commands or events: both start with a
 * next pointer). push returns 1 when the queue was empty before. */
typedef struct lk_queue lk_queue;
lk_queue *lk_queue_new(void);
int lk_queue_push(lk_queue *q, void *msg);
/* Pushes an event whose latest state is what matters (WATCH, OWNED). Every
 * event is kept while the Lua side takes them; once LK_FOLD_AFTER wait
 * untaken (nobody dispatches), an event whose kind and id is already queued
 * replaces that one's content instead (in place, ev is freed; skipped
 * counts the states folded in), except a lock's loss, which stays. So what
 * nobody takes stays bounded by LK_FOLD_AFTER plus the number of watches
 * and locks plus the losses (one per lease lost). Returns 1 when the queue
 * was empty before. */
#define LK_FOLD_AFTER 256
#define LK_FOLD_NAME 512   /* names up to this long fold (locker.MAX_NAME) */
int lk_queue_push_latest(lk_queue *q, lk_event *ev);
/* Takes the whole content in order (a list linked by next), or NULL. */
void *lk_queue_take_all(lk_queue *q);
void lk_queue_free(lk_queue *q, void (*free_msg)(void *));

#endif
