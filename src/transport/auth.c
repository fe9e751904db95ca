#ifndef _GNU_SOURCE
#define _GNU_SOURCE  /* memmem */
#endif
#include "transport/auth.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/backoff.h"
#include "base/clock.h"
#include "transport/wire.h"

#define REFUSED_MIN_MS 1000    /* after a refusal, requests fail at once */
#define REFUSED_MAX_MS 30000   /* for this long, growing with each */

struct lk_auth {
    lk_http *http;
    const lk_config *cfg;
    lk_stats *stats;
    lk_req *req;               /* the authentication in flight */
    int have_token;            /* requests may go (with the token, or with
                                  none when etcd has authentication off) */
    int refusals;              /* in a row */
    int64_t refused_until;     /* ms: fail at once until then */
    char refused[640];         /* etcd's reason */
};

static void authenticate(lk_auth *a);

/* etcd's words for "the token this request went with is no good": expired
 * or unknown; issued before users or roles changed; or none at all (sent
 * while a new one was fetched, or etcd turned authentication on since). */
static const char *const refused_token[] = {
    "invalid auth token", "revision of auth store is old", "user name is empty",
};

int lk_auth_token_refused(const char *m)
{
    for (size_t i = 0; m && i < sizeof refused_token / sizeof *refused_token; i++)
        if (strstr(m, refused_token[i])) return 1;
    return 0;
}

static int answer_refuses_token(const lk_req *r)
{
    if (r->status == 401) return 1;
    if (r->grpc_status > 0 && lk_auth_token_refused(r->grpc_msg)) return 1;
    for (size_t i = 0; r->answer.len && i < sizeof refused_token / sizeof *refused_token; i++)
        if (memmem(r->answer.data, r->answer.len, refused_token[i], strlen(refused_token[i])))
            return 1;
    return 0;
}

int lk_auth_refusal(int grpc, const char *m)
{
    if (grpc == 7 || grpc == 16) return 1;  /* PermissionDenied, Unauthenticated */
    if (!m) return 0;
    if (strstr(m, "user name is empty")) return 1;  /* no user given */
    return grpc < 0 && (strstr(m, "code = PermissionDenied") ||
                        strstr(m, "code = Unauthenticated"));
}

/* No token now: one is being fetched, or it is fetched now, or (after a
 * refusal, for a while) the requests that wait for one fail soon. */
static void need_token(lk_auth *a)
{
    if (a->req) return;
    if (lk_now_ms() < a->refused_until)
        lk_http_release_held(a->http, LK_ERR_AUTH, a->refused);
    else
        authenticate(a);
}

static int before_send(void *ctx, lk_req *r)
{
    lk_auth *a = ctx;
    if (r->owner == a) {
        r->secret = 1;  /* the password goes in its body */
        return 0;
    }
    if (a->have_token) return 0;
    need_token(a);
    return 1;
}

static void token_expired(lk_auth *a)
{
    a->have_token = 0;
    lk_http_set_token(a->http, NULL);
    authenticate(a);
}

static int after_answer(void *ctx, lk_req *r)
{
    lk_auth *a = ctx;
    if (r->owner == a || !answer_refuses_token(r)) return 0;
    if (r->auth_retries++ >= 2) return 0;  /* its own answer, then */
    if (a->have_token && r->auth_gen == lk_http_token_gen(a->http))
        token_expired(a);
    else if (a->have_token)  /* a newer token came meanwhile: go with it */
        lk_http_release_held(a->http, LK_OK, NULL);
    else
        need_token(a);
    return 1;
}

void lk_auth_rejected(lk_auth *a, int gen)
{
    if (a && a->have_token && gen == lk_http_token_gen(a->http)) token_expired(a);
}

/* Its answer: a token (the held requests go), a refusal (they fail with
 * "auth"), or no answer (they fail as any request would). */
static void on_authenticated(lk_req *r)
{
    lk_auth *a = r->owner;
    a->req = NULL;
    lk_err code;
    char msg[512];
    int grpc = -1;
    if (r->fail_code || lk_req_transport_failed(r) || r->too_big) {
        code = r->fail_code ? r->fail_code : r->too_big ? LK_ERR_PROTOCOL : LK_ERR_UNAVAILABLE;
        snprintf(msg, sizeof msg, "authenticating with etcd at %s: %s",
                 lk_req_endpoint(r), r->too_big ? "answer too big" : lk_req_error(r));
        lk_http_release_held(a->http, code, msg);
        return;
    }
    lk_buf token = {0};
    int got = lk_wire_of(a->cfg)->auth_answer(r, &token, &grpc, msg, sizeof msg);
    if (got > 0) {
        if (lk_http_set_token(a->http, token.data) == 0) {
            __atomic_add_fetch(&a->stats->tokens, 1, __ATOMIC_RELAXED);
            a->have_token = 1;
            a->refusals = 0;
            lk_http_release_held(a->http, LK_OK, NULL);
        } else {
            lk_http_release_held(a->http, LK_ERR_NOMEM, "out of memory");
        }
    } else if (got == 0) {  /* etcd has authentication off: nothing to send */
        a->have_token = 1;
        lk_http_release_held(a->http, LK_OK, NULL);
    } else if (grpc == 9 && strstr(msg, "not enabled")) {  /* auth is off */
        a->have_token = 1;
        lk_http_release_held(a->http, LK_OK, NULL);
    } else if (grpc == 3 || grpc == 5 || grpc == 7 || grpc == 9 || grpc == 16) {
        /* etcd said no to these credentials: not asked again for a while */
        snprintf(a->refused, sizeof a->refused, "etcd refused authentication as "
                 "user '%s': %s", a->cfg->user, msg);
        a->refusals++;
        a->refused_until = lk_now_ms() +
            lk_backoff_ms(a->refusals, REFUSED_MIN_MS, REFUSED_MAX_MS);
        lk_http_release_held(a->http, LK_ERR_AUTH, a->refused);
    } else {  /* no leader, overloaded, an answer we cannot read: no verdict */
        char why[640];
        snprintf(why, sizeof why, "authenticating with etcd at %s: %s", lk_req_endpoint(r), msg);
        lk_http_release_held(a->http, grpc == 14 || grpc == 4 || grpc == 8 || r->status >= 500
                             ? LK_ERR_UNAVAILABLE : grpc >= 0 ? LK_ERR_ETCD : LK_ERR_PROTOCOL, why);
    }
    lk_buf_free_secret(&token);
}

static void authenticate(lk_auth *a)
{
    if (a->req) return;  /* single flight */
    lk_buf body = {0};
    const lk_wire *w = lk_wire_of(a->cfg);
    if (w->auth_body(&body, a->cfg->user, a->cfg->password ? a->cfg->password : "")) {
        lk_buf_free_secret(&body);
        lk_http_release_held(a->http, LK_ERR_NOMEM, "out of memory");
        return;
    }
    lk_req *r = lk_req_new(a->http, w->auth, on_authenticated, a,
                           (long)a->cfg->timeout_ms);
    if (!r) {
        lk_buf_free_secret(&body);
        lk_http_release_held(a->http, LK_ERR_NOMEM, "out of memory");
        return;
    }
    r->urgent = 1;  /* everything else may wait for it */
    r->secret = 1;  /* the password is in its body, the token in its answer */
    r->body = body;
    __atomic_add_fetch(&a->stats->authentications, 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&a->stats->requests, 1, __ATOMIC_RELAXED);
    a->req = r;
    if (lk_req_start(r)) {
        a->req = NULL;
        lk_http_release_held(a->http, LK_ERR_NOMEM, "could not start a request");
    }
}

lk_auth *lk_auth_new(lk_http *h, const lk_config *cfg, lk_stats *stats)
{
    lk_auth *a = calloc(1, sizeof *a);
    if (!a) return NULL;
    a->http = h;
    a->cfg = cfg;
    a->stats = stats;
    lk_http_guard g = { .ctx = a, .before_send = before_send,
                        .after_answer = after_answer };
    lk_http_set_guard(h, &g);
    return a;
}

void lk_auth_free(lk_auth *a)
{
    free(a);
}
