/* The floor for `make bench`: the two HTTP requests a lock cycle cannot
 * avoid — a put-if-absent txn and a deleterange on one key — sent by a
 * minimal libcurl program over one keep-alive connection, nothing else.
 * usage: floor URL SECONDS [locker]
 *   -> prints "cycles N seconds S p50_us P p99_us Q txn_p50_us T"
 * With "locker", the txn has the shape of locker's acquisition (the key on
 * a lease; put only if nobody is under the lock's prefix, else read the own
 * key and the owner), to tell etcd's share of the difference from the
 * client's.
 */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static size_t sink(char *p, size_t size, size_t n, void *ud)
{
    (void)p;
    (void)ud;
    return size * n;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static char answer[4096];
static size_t answer_len;

static size_t keep(char *p, size_t size, size_t n, void *ud)
{
    (void)ud;
    size_t k = size * n;
    if (answer_len + k < sizeof answer) {
        memcpy(answer + answer_len, p, k);
        answer_len += k;
        answer[answer_len] = '\0';
    }
    return k;
}

static int post(CURL *c, const char *url, const char *body)
{
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    long status = 0;
    CURLcode rc = curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    return rc == CURLE_OK && status == 200 ? 0 : -1;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: floor URL SECONDS\n");
        return 2;
    }
    char txn[256], del[256];
    snprintf(txn, sizeof txn, "%s/v3/kv/txn", argv[1]);
    snprintf(del, sizeof del, "%s/v3/kv/deleterange", argv[1]);
    double seconds = atof(argv[2]);
    /* key "/floor/x", value "v": the same sizes as a lock's */
    const char *put = "{\"compare\":[{\"key\":\"L2Zsb29yL3g=\",\"target\":\"CREATE\","
                      "\"create_revision\":\"0\"}],\"success\":[{\"request_put\":"
                      "{\"key\":\"L2Zsb29yL3g=\",\"value\":\"dg==\"}}]}";
    const char *drop = "{\"key\":\"L2Zsb29yL3g=\"}";
    curl_global_init(CURL_GLOBAL_DEFAULT);
    CURL *c = curl_easy_init();
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    char shaped[1024];
    if (argc > 3 && !strcmp(argv[3], "locker")) {
        char grant[256];
        snprintf(grant, sizeof grant, "%s/v3/lease/grant", argv[1]);
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, keep);
        if (post(c, grant, "{\"TTL\":\"60\"}")) { fprintf(stderr, "floor: grant failed\n"); return 1; }
        const char *id = strstr(answer, "\"ID\":\"");
        if (!id) { fprintf(stderr, "floor: no lease ID\n"); return 1; }
        id += 6;
        snprintf(shaped, sizeof shaped,
                 "{\"compare\":[{\"key\":\"L2Zsb29yLw==\",\"range_end\":\"L2Zsb29yMA==\","
                 "\"target\":\"CREATE\",\"result\":\"EQUAL\",\"create_revision\":\"0\"}],"
                 "\"success\":[{\"request_put\":{\"key\":\"L2Zsb29yL3g=\",\"value\":\"dg==\","
                 "\"lease\":\"%.*s\"}}],\"failure\":[{\"request_range\":{\"key\":"
                 "\"L2Zsb29yL3g=\"}},{\"request_range\":{\"key\":\"L2Zsb29yLw==\","
                 "\"range_end\":\"L2Zsb29yMA==\",\"sort_order\":\"ASCEND\","
                 "\"sort_target\":\"CREATE\",\"limit\":\"1\",\"keys_only\":true}}]}",
                 (int)strcspn(id, "\""), id);
        put = shaped;
    }
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, sink);
    size_t cap = 1 << 20, n = 0;
    double *cycle = malloc(cap * sizeof *cycle), *txn_t = malloc(cap * sizeof *txn_t);
    double start = now();
    while (now() - start < seconds && n < cap) {
        double t0 = now();
        if (post(c, txn, put)) { fprintf(stderr, "floor: txn failed\n"); return 1; }
        double t1 = now();
        if (post(c, del, drop)) { fprintf(stderr, "floor: delete failed\n"); return 1; }
        cycle[n] = now() - t0;
        txn_t[n] = t1 - t0;
        n++;
    }
    double took = now() - start;
    qsort(cycle, n, sizeof *cycle, cmp);
    qsort(txn_t, n, sizeof *txn_t, cmp);
    printf("cycles %zu seconds %.3f p50_us %.1f p99_us %.1f txn_p50_us %.1f\n", n, took,
           cycle[n / 2] * 1e6, cycle[n * 99 / 100] * 1e6, txn_t[n / 2] * 1e6);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    free(cycle);
    free(txn_t);
    return 0;
}
