/* The TLS side of a connection to etcd: the options every request is sent
 * with, and what a failed handshake means, said so that a person can fix
 * it (which file, which option). Engine thread. */
#ifndef LK_TLS_H
#define LK_TLS_H

#include <stddef.h>

#include <curl/curl.h>

#include "base/config.h"

/* Applies the client's TLS and transport policy to an easy handle: CA,
 * client certificate, verification, no redirects, no proxy from the
 * environment unless asked, http and https only. max_tls12 caps the
 * handshake at TLS 1.2 (see LK_TLS_UNSURE). */
void lk_tls_setopt(CURL *c, const lk_config *cfg, int max_tls12);

enum {
    LK_TLS_NONE,      /* not TLS's doing: a transport fault like any other */
    LK_TLS_FAILED,    /* TLS failed for a reason retrying cannot change */
    LK_TLS_UNSURE,    /* the connection ended right after a TLS 1.3
                         handshake: etcd may have refused our certificate,
                         which TLS 1.3 tells only then. A TLS 1.2 attempt
                         hears the reason during the handshake. */
};

/* Classifies a failed transfer to endpoint (rc and libcurl's message);
 * handshake_done: a TLS session was set up before it failed; capped: the
 * attempt was already capped at TLS 1.2. On LK_TLS_FAILED, msg says what
 * failed and which option to look at. */
int lk_tls_failure(CURLcode rc, const char *curl_msg, int handshake_done,
                   int capped, const lk_config *cfg, const char *endpoint,
                   char *msg, size_t msg_size);

#endif
