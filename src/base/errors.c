#include "base/errors.h"

static const char *const names[LK_ERR_COUNT] = {
    [LK_OK] = "",
    [LK_ERR_TIMEOUT] = "timeout",
    [LK_ERR_LOCKED] = "locked",
    [LK_ERR_UNAVAILABLE] = "unavailable",
    [LK_ERR_LEASE_LOST] = "lease_lost",
    [LK_ERR_LOST] = "lost",
    [LK_ERR_NOT_OWNER] = "not_owner",
    [LK_ERR_LIMIT] = "limit",
    [LK_ERR_CANCELED] = "canceled",
    [LK_ERR_CLOSED] = "closed",
    [LK_ERR_ETCD] = "etcd",
    [LK_ERR_PROTOCOL] = "protocol",
    [LK_ERR_TLS] = "tls",
    [LK_ERR_AUTH] = "auth",
    [LK_ERR_NOMEM] = "nomem",
    [LK_ERR_PENDING] = "pending",
    [LK_ERR_NOT_WATCHED] = "not_watched",
    [LK_ERR_INTERNAL] = "internal",
};

const char *lk_err_name(lk_err e)
{
    return (unsigned)e < LK_ERR_COUNT && names[e] ? names[e] : "internal";
}
