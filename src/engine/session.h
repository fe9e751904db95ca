/* The session: the client's one lease and its one watch stream on the
 * client's prefix. It keeps the lease's local deadline and publishes what
 * happens to the lease and on the stream through hooks that the engine
 * sets; it never calls a lock or a watch itself. Engine thread only, but
 * for lk_session_view. */
#ifndef LK_SESSION_H
#define LK_SESSION_H

#include <stdint.h>

#include "etcd/answers.h"
#include "engine/io.h"

/* One change under the prefix, as the stream showed it. */
typedef struct lk_change {
    const char *name;          /* the lock name the key belongs to */
    size_t name_len;
    int deleted;
    int marker;                /* a clean release's mark (keys.h), not a
                                  contender: only locks read it */
    const lk_kv *kv;           /* key, value, revisions, lease */
} lk_change;

/* What the session tells its user (the engine routes it on). */
typedef struct lk_session_hooks {
    void *ctx;
    void (*ready)(void *ctx);         /* lease and stream both up */
    void (*failed)(void *ctx, lk_err code, const char *msg);  /* the
                                         lease or the stream cannot be had */
    void (*lease_lost)(void *ctx, const char *why);
    void (*renewed)(void *ctx);       /* the deadline moved on */
    void (*proven)(void *ctx);        /* the stream proved complete up to
                                         a later moment (proven_at) */
    void (*expired)(void *ctx);       /* the deadline passed unrenewed */
    void (*stream_ready)(void *ctx);
    void (*resync)(void *ctx);        /* the stream lost events */
    void (*change)(void *ctx, const lk_change *c);
    int (*wanted)(void *ctx);         /* anything needs the session now (a
                                         lock or a watch: each relies on the
                                         stream to hear of changes) */
} lk_session_hooks;

/* An answer whose revision the stream has yet to reach (see lk_io). */
typedef struct lk_proof {
    int64_t rev, at;           /* at 0: none */
} lk_proof;

typedef struct lk_session {
    lk_io *io;
    lk_session_hooks hooks;
    int64_t lease;             /* 0: none */
    lk_req *lease_req;         /* a grant in flight */
    lk_lease_stream renewals;  /* the keepalive flow (a renewal in flight) */
    int64_t next_keepalive;
    int64_t expires, deadline, jeopardy_at;
    int expired;               /* the deadline passed without renewal */
    int64_t grant_retry_at;    /* 0: none planned */
    int grant_failures;
    lk_req *stream;            /* the watch stream, NULL when down */
    int stream_ready;          /* etcd confirmed the watch */
    int stream_progress;       /* it showed an event or progress since */
    int stream_resync;         /* we ended it to start afresh: reopen now */
    int stream_refused;        /* etcd canceled it or answered an error */
    int64_t stream_rev;        /* highest revision the stream has shown */
    int64_t stream_retry_at;
    int stream_failures;       /* in a row, without progress between */
    int64_t opened_at;         /* when the stream was last opened */
    /* The stream's proof of completeness: it has shown every event up to
     * etcd's state at proven_at (the send time of an answer whose revision
     * it reached), so no deletion before then went unseen. */
    int64_t proven_at;
    lk_proof pending[2];       /* the oldest and the newest unproven */
    int64_t sampled_at;        /* io's newest answer, last taken */
    lk_req *probe;             /* a read, or a write the stream must show */
    int probe_write;           /* it is the write */
    int64_t written_at;        /* the last write's send time */
    int64_t echo_due;          /* the write landed: its event is due by then */
    int64_t next_probe_at;     /* after a failed probe: not before then */
    int probe_failures;
    lk_err fail_code;          /* the last failure's cause, LK_OK when none */
    char fail_msg[LK_MSG_SIZE];
    lk_req *revoke;            /* at close */
    lk_session_view view;      /* published copy (atomics) */
    int metric_state;          /* the session-state gauge's last value */
    int leased_once;           /* a lease was granted once (state: expired) */
    int ended_why;             /* lk_reconnect_reason of the stream's end */
} lk_session;

void lk_session_init(lk_session *s, lk_io *io, const lk_session_hooks *hooks);
void lk_session_need(lk_session *s);          /* lease + stream, soon */
void lk_session_need_stream(lk_session *s);   /* the stream only */
int lk_session_ready(const lk_session *s);    /* lease and stream up */
/* The last failure's cause (lease or stream), LK_OK when none. */
lk_err lk_session_failure(const lk_session *s, const char **msg);
/* Whether a new owner may be told it owns: the lease is confirmed and its
 * renewals are not late. */
int lk_session_confirmed(const lk_session *s, int64_t now);
/* How long a proof that a key exists is trusted (ms): the request timeout
 * plus half the margin. A lock whose key nothing has confirmed for that
 * long is not owned, however well its lease is renewed. */
int64_t lk_session_trust_ms(const lk_session *s);
int64_t lk_session_tick(lk_session *s, int64_t now);  /* next deadline */
void lk_session_lease_gone(lk_session *s, const char *why);
void lk_session_stop(lk_session *s);          /* close: revoke, end stream */
int lk_session_busy(const lk_session *s);     /* revoke still in flight */

/* Any thread: a copy of the published view. */
void lk_session_view_read(const lk_session_view *v, lk_session_view *out);

#endif
