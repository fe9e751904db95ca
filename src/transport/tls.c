#include "transport/tls.h"

#include <stdio.h>
#include <string.h>

void lk_tls_setopt(CURL *c, const lk_config *cfg, int max_tls12)
{
#if LIBCURL_VERSION_NUM >= 0x075500
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
#else
    curl_easy_setopt(c, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
    /* the gateway: one request per connection, as over http, so a stalled
     * answer holds up no other (http.c asks for HTTP/2 after this for gRPC,
     * whose calls share one connection by design) */
    curl_easy_setopt(c, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    if (!cfg->proxy_env) curl_easy_setopt(c, CURLOPT_PROXY, "");
    if (cfg->cacert) curl_easy_setopt(c, CURLOPT_CAINFO, cfg->cacert);
    if (cfg->cert) curl_easy_setopt(c, CURLOPT_SSLCERT, cfg->cert);
    if (cfg->key) curl_easy_setopt(c, CURLOPT_SSLKEY, cfg->key);
    if (cfg->insecure) {
        curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 0L);
        curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 0L);
    }
    if (max_tls12)
        curl_easy_setopt(c, CURLOPT_SSLVERSION,
                         (long)(CURL_SSLVERSION_TLSv1_2 | CURL_SSLVERSION_MAX_TLSv1_2));
}

static int has(const char *s, const char *what)
{
    return s && strstr(s, what) != NULL;
}

int lk_tls_failure(CURLcode rc, const char *curl_msg, int handshake_done,
                   int capped, const lk_config *cfg, const char *endpoint,
                   char *msg, size_t n)
{
    const char *m = curl_msg ? curl_msg : "";
    switch (rc) {
    case CURLE_PEER_FAILED_VERIFICATION:
        if (has(m, "subject name") || has(m, "host name"))
            snprintf(msg, n, "etcd's certificate at %s is not for that host name "
                     "(use the name or address the certificate names): %s", endpoint, m);
        else if (has(m, "issuer") || has(m, "self-signed") || has(m, "self signed"))
            snprintf(msg, n, "etcd's certificate at %s is not signed by a trusted CA "
                     "(%s): %s", endpoint, cfg->cacert ? "is cacert the CA that signed it?"
                     : "set cacert to the CA that signed it", m);
        else
            snprintf(msg, n, "etcd's certificate at %s was not accepted: %s", endpoint, m);
        return LK_TLS_FAILED;
    case CURLE_SSL_CERTPROBLEM:
        snprintf(msg, n, "the client certificate or key cannot be used (cert, key): %s", m);
        return LK_TLS_FAILED;
    case CURLE_SSL_CACERT_BADFILE:
        snprintf(msg, n, "the CA file cannot be used (cacert): %s", m);
        return LK_TLS_FAILED;
    case CURLE_SSL_CIPHER: case CURLE_SSL_ISSUER_ERROR: case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH: case CURLE_SSL_ENGINE_NOTFOUND:
    case CURLE_SSL_ENGINE_SETFAILED: case CURLE_USE_SSL_FAILED:
#if LIBCURL_VERSION_NUM >= 0x074d00
    case CURLE_SSL_CLIENTCERT:
#endif
        snprintf(msg, n, "TLS with %s failed: %s", endpoint, m);
        return LK_TLS_FAILED;
    case CURLE_SSL_CONNECT_ERROR: case CURLE_SEND_ERROR: case CURLE_RECV_ERROR:
    case CURLE_HTTP2: case CURLE_HTTP2_STREAM: case CURLE_PARTIAL_FILE:  /* the same, by HTTP/2 */
        break;
    default:
        return LK_TLS_NONE;
    }
    if (has(m, "alert")) {  /* etcd said why it ended the session */
        if (has(m, "certificate required") || has(m, "bad certificate") ||
            has(m, "unknown ca") || has(m, "handshake failure"))
            snprintf(msg, n, cfg->cert
                     ? "etcd at %s refused the client certificate (is it signed by "
                       "a CA that etcd trusts?): %s"
                     : "etcd at %s requires a client certificate (set cert and key): %s",
                     endpoint, m);
        else if (capped)  /* our TLS 1.2 try, refused (a TLS 1.3-only etcd) */
            return LK_TLS_NONE;
        else
            snprintf(msg, n, "etcd at %s ended the TLS session: %s", endpoint, m);
        return LK_TLS_FAILED;
    }
    if (rc == CURLE_SSL_CONNECT_ERROR && has(m, "wrong version number")) {
        snprintf(msg, n, "TLS with %s failed (does etcd serve https there?): %s",
                 endpoint, m);
        return LK_TLS_FAILED;
    }
    if (rc != CURLE_SSL_CONNECT_ERROR && handshake_done && !capped)
        return LK_TLS_UNSURE;
    return LK_TLS_NONE;  /* a reset during the handshake: a dying member */
}
