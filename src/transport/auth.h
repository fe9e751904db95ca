/* etcd authentication: a token from /v3/auth/authenticate goes with every
 * request. Requests that need one wait while one authentication runs (never
 * two at once), and go again when etcd says their token expired. A refusal
 * (wrong password, unknown user) fails the waiting requests with "auth" and
 * is not asked again for a while: no storm, no loop. Engine thread. */
#ifndef LK_AUTH_H
#define LK_AUTH_H

#include "base/config.h"
#include "transport/http.h"

typedef struct lk_auth lk_auth;

/* Guards h's requests with cfg's user and password (cfg outlives it);
 * NULL when out of memory. */
lk_auth *lk_auth_new(lk_http *h, const lk_config *cfg, lk_stats *stats);
/* After lk_http_free (requests in flight belong to h). */
void lk_auth_free(lk_auth *a);
/* etcd refused the token a request went with (gen: lk_req's auth_gen), in
 * a way http cannot see (a watch stream's cancel reason): the next
 * requests wait for a new token, unless one came since. */
void lk_auth_rejected(lk_auth *a, int gen);
/* Whether a message from etcd says the token expired or is unknown. */
int lk_auth_token_refused(const char *etcd_msg);
/* Whether etcd's error (gRPC code, or -1 with a watch's cancel reason, which
 * names the code in its text) means "these credentials may not do this". */
int lk_auth_refusal(int grpc, const char *etcd_msg);

#endif
