/* The one vocabulary of failures. Every failure the engine reports carries
 * one of these codes; Lua sees its name (lk_err_name) as the third value of
 * `nil, msg, code`, and the README lists them all with what they mean. */
#ifndef LK_ERRORS_H
#define LK_ERRORS_H

typedef enum lk_err {
    LK_OK = 0,
    LK_ERR_TIMEOUT,       /* the caller's wait ran out */
    LK_ERR_LOCKED,        /* held by another owner (wait = false) */
    LK_ERR_UNAVAILABLE,   /* etcd unreachable, or not answering in time */
    LK_ERR_LEASE_LOST,    /* the session lease ended, or may have */
    LK_ERR_LOST,          /* the lock's key was deleted by someone else */
    LK_ERR_NOT_OWNER,     /* set() on a lock not owned */
    LK_ERR_CANCELED,      /* released (or canceled) before it was answered */
    LK_ERR_CLOSED,        /* the client is closed */
    LK_ERR_ETCD,          /* etcd refused the request (its message says why) */
    LK_ERR_PROTOCOL,      /* an answer we could not read */
    LK_ERR_TLS,           /* the TLS session failed */
    LK_ERR_AUTH,          /* etcd refused the user, password or permission */
    LK_ERR_NOMEM,         /* out of memory */
    LK_ERR_PENDING,       /* cached(): a watched name's first answer is not in */
    LK_ERR_NOT_WATCHED,   /* cached(): this client does not watch the name */
    LK_ERR_INTERNAL,      /* the engine was used wrongly: a bug in locker */
    LK_ERR_LIMIT,         /* a semaphore's contenders ask for another limit */
    LK_ERR_COUNT
} lk_err;

/* "timeout", "locked", ...; "" for LK_OK; "internal" for an unknown code. */
const char *lk_err_name(lk_err e);

#endif
