/* A client's settings, counters and published session times: plain data
 * that the binding fills or reads, and that every part of the engine may
 * look at. */
#ifndef LK_CONFIG_H
#define LK_CONFIG_H

#include <stddef.h>
#include <stdint.h>

/* How requests travel: etcd's native gRPC (HTTP/2, protobuf), or its
 * JSON gateway (HTTP/1.1). */
typedef enum { LK_TRANSPORT_GATEWAY = 0, LK_TRANSPORT_GRPC = 1 } lk_transport;

typedef struct lk_config {
    lk_transport transport;
    char **endpoints;          /* "http://host:port", no trailing slash */
    int n_endpoints;
    char *prefix;              /* key prefix, e.g. "/locker/" */
    size_t prefix_len;
    int64_t ttl;               /* session lease, seconds */
    int64_t timeout_ms;        /* per request */
    int64_t margin_ms;         /* ownership ends this long before the lease
                                  could expire on the server */
    int64_t lock_delay_ms;     /* a waiter whose predecessor vanished without
                                  a clean release owns this much later; this
                                  client marks its clean releases (0: off) */
    /* TLS (NULL/0: libcurl's defaults, verification on) */
    char *cacert;              /* CA bundle that signs etcd's certificates */
    char *cert, *key;          /* client certificate and its key (PEM) */
    int insecure;              /* no verification of etcd's certificate */
    int proxy_env;             /* honour http(s)_proxy variables */
    /* etcd authentication (user NULL: none) */
    char *user;
    char *password;            /* a secret: never in a message or a log */
} lk_config;

/* What the engine has done so far (for benchmarks and status pages). */
typedef struct lk_stats {
    int64_t requests;          /* HTTP requests started (streams included) */
    int64_t keepalives;        /* lease renewals sent */
    int64_t stream_events;     /* watch events received */
    int64_t stream_connects;   /* watch streams opened */
    int64_t authentications;   /* tokens asked of /v3/auth/authenticate */
    int64_t tokens;            /* tokens etcd gave (the engine tells each) */
} lk_stats;

/* The lease's times, all ms on lk_now_ms's clock, published for the Lua
 * thread (atomics). From jeopardy_at on, renewals are late; from deadline
 * on, nobody may act as an owner; at expires the server may end the lease
 * (it is the send time of the last confirmed renewal + the granted TTL). */
typedef struct lk_session_view {
    int64_t lease;             /* 0: none */
    int64_t jeopardy_at;
    int64_t deadline;
    int64_t expires;
    int lost;                  /* the last lease ended, none granted since */
    int64_t heard_at;          /* the watch stream last showed it is live */
    int stream_up;             /* the stream runs, and is not suspected */
    int endpoint;              /* index of the endpoint requests go to */
} lk_session_view;

#endif
