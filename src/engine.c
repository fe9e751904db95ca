/* The engine thread: the curl multi loop, the command queue it serves and the
 * event queue it fills, and the client's lifetime (lazy start, close). */
#include "internal.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#define IDLE_POLL_MS 1000

int64_t lk_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static char *dup_bytes(const char *p, size_t n)
{
    char *s = malloc(n + 1);
    if (s) {
        memcpy(s, p, n);
        s[n] = '\0';
    }
    return s;
}

static void free_config(lk_config *c)
{
    for (int i = 0; i < c->n_endpoints; i++) free(c->endpoints[i]);
    free(c->endpoints);
    free(c->prefix);
}

lk_engine *lk_engine_new(const lk_config *cfg, char *err, size_t err_size)
{
    lk_engine *e = calloc(1, sizeof *e);
    if (!e) goto nomem;
    e->event_fd = -1;
    e->cfg = *cfg;
    e->cfg.endpoints = calloc((size_t)cfg->n_endpoints, sizeof(char *));
    e->cfg.n_endpoints = 0;
    e->cfg.prefix = dup_bytes(cfg->prefix, cfg->prefix_len);
    if (!e->cfg.endpoints || !e->cfg.prefix) goto nomem;
    for (int i = 0; i < cfg->n_endpoints; i++) {
        e->cfg.endpoints[i] = dup_bytes(cfg->endpoints[i],
                                        strlen(cfg->endpoints[i]));
        if (!e->cfg.endpoints[i]) goto nomem;
        e->cfg.n_endpoints++;
    }
    e->commands = lk_queue_new();
    e->events = lk_queue_new();
    if (!e->commands || !e->events) goto nomem;
    if (lk_cache_init(&e->cache)) goto nomem;
    e->cache_ready = 1;
    if (!(e->close_cmd = lk_cmd_new(LK_CMD_CLOSE))) goto nomem;
    return e;
nomem:
    snprintf(err, err_size, "out of memory creating the client");
    lk_engine_free(e);
    return NULL;
}

/* The event fd belongs to one process: a child after fork() gets its own. */
static int ensure_event_fd(lk_engine *e)
{
    if (e->event_fd >= 0 && e->fd_pid == getpid()) return 0;
    if (e->event_fd >= 0) close(e->event_fd);
    e->event_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    e->fd_pid = getpid();
    return e->event_fd >= 0 ? 0 : -1;
}

int lk_engine_fd(const lk_engine *e)
{
    ensure_event_fd((lk_engine *)e);
    return e->event_fd;
}

lk_cache *lk_engine_cache(lk_engine *e)
{
    return &e->cache;
}

void lk_engine_stats(const lk_engine *e, lk_stats *out)
{
    out->requests = __atomic_load_n(&e->stats.requests, __ATOMIC_RELAXED);
    out->keepalives = __atomic_load_n(&e->stats.keepalives, __ATOMIC_RELAXED);
    out->stream_events = __atomic_load_n(&e->stats.stream_events, __ATOMIC_RELAXED);
    out->stream_connects = __atomic_load_n(&e->stats.stream_connects, __ATOMIC_RELAXED);
}

/* Engine thread: one more of a counter. */
void lk_count(int64_t *counter)
{
    __atomic_add_fetch(counter, 1, __ATOMIC_RELAXED);
}

int64_t lk_engine_lease(const lk_engine *e)
{
    return __atomic_load_n(&e->lease_seen, __ATOMIC_ACQUIRE);
}

void lk_engine_global_init(void)
{
    static int done;
    if (!done) curl_global_init(CURL_GLOBAL_DEFAULT);
    done = 1;
}

uint64_t lk_engine_next_id(lk_engine *e)
{
    return ++e->next_id;
}

void lk_emit(lk_engine *e, lk_event *ev)
{
    if (!ev) return;
    if (lk_queue_push(e->events, ev)) {
        uint64_t one = 1;
        ssize_t n = write(e->event_fd, &one, sizeof one);
        (void)n;  /* EAGAIN: the counter is already non-zero, fd readable */
    }
}

void lk_emit_ok(lk_engine *e, uint64_t id)
{
    lk_event *ev = lk_event_new(LK_EV_RESULT, id);
    if (ev) ev->ok = 1;
    lk_emit(e, ev);
}

void lk_emit_fail(lk_engine *e, uint64_t id, const char *code,
                  const char *fmt, ...)
{
    lk_event *ev = lk_event_new(LK_EV_RESULT, id);
    if (!ev) return;
    char msg[LK_MSG_SIZE];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(ev->code, sizeof ev->code, "%s", code);
    ev->msg = dup_bytes(msg, strlen(msg));
    lk_emit(e, ev);
}

cJSON *lk_answer(lk_req *r, const char **code, char *msg, size_t msg_size)
{
    if (lk_req_transport_failed(r)) {
        *code = "unavailable";
        snprintf(msg, msg_size, "etcd at %s unreachable: %s",
                 lk_req_endpoint(r), lk_req_error(r));
        return NULL;
    }
    int grpc = -1;
    char text[LK_MSG_SIZE];
    cJSON *root = lk_etcd_parse(r->answer.data, r->answer.len, r->status,
                                text, sizeof text, &grpc);
    if (root) return root;
    /* NotFound on a lease-carrying call is etcd saying the lease is gone. */
    *code = grpc == 5 && strstr(text, "lease") ? "lease_lost"
          : grpc == 14 || r->status == 503 ? "unavailable"
          : grpc >= 0 ? "etcd" : "protocol";
    snprintf(msg, msg_size, "%s", text);
    return NULL;
}

lk_req *lk_send(lk_engine *e, const char *path, lk_req_done_fn done,
                void *owner, lk_buf *body, int64_t timeout_ms)
{
    long t = (long)(timeout_ms ? timeout_ms : e->cfg.timeout_ms);
    lk_req *r = lk_req_new(e->http, path, done, owner, t);
    if (!r) {
        lk_buf_free(body);
        return NULL;
    }
    r->body = *body;                 /* takes the body over */
    *body = (lk_buf){0};
    lk_count(&e->stats.requests);
    return lk_req_start(r) == 0 ? r : NULL;
}

static void serve(lk_engine *e, lk_cmd *c)
{
    if (c->kind == LK_CMD_CLOSE) {
        if (!e->stopping) {
            e->stopping = 1;
            lk_locks_close(e);
            lk_watches_close(e);
            lk_session_stop(e);
        }
        lk_cmd_free(c);
        return;
    }
    if (e->stopping) {
        lk_emit_fail(e, c->id, "closed", "client is closed");
        lk_cmd_free(c);
        return;
    }
    if (c->kind == LK_CMD_WATCH || c->kind == LK_CMD_UNWATCH) lk_watch_command(e, c);
    else lk_lock_command(e, c);
}

/* The engine thread's body: owns the multi handle and everything on it. */
static void *run(void *arg)
{
    lk_engine *e = arg;
    for (;;) {
        lk_cmd *c = lk_queue_take_all(e->commands);
        while (c) {
            lk_cmd *next = c->next;
            serve(e, c);
            c = next;
        }
        if (e->stopping && !lk_session_busy(e)) break;
        int64_t now = lk_now_ms();
        int64_t next = now + IDLE_POLL_MS;
        if (!e->stopping) {
            int64_t t = lk_session_tick(e, now);
            if (t && t < next) next = t;
            t = lk_locks_tick(e, now);
            if (t && t < next) next = t;
            t = lk_watches_tick(e, now);
            if (t && t < next) next = t;
        }
        int wait = next > now ? (int)(next - now) : 0;
        curl_multi_poll(lk_http_multi(e->http), NULL, 0, wait, NULL);
        lk_http_perform(e->http);
    }
    /* e->http stays: the Lua thread may still wake it; it frees it after
     * joining */
    lk_map_free(&e->locks_by_name);
    lk_map_free(&e->locks_by_id);
    return NULL;
}

/* Lua thread. Starts the engine thread with every signal blocked in it. */
static int ensure_started(lk_engine *e, char *err, size_t err_size)
{
    if (e->started) {
        if (e->thread_pid != getpid()) {
            snprintf(err, err_size, "client used after fork(): make a new "
                     "client in each process");
            return -1;
        }
        return 0;
    }
    if (ensure_event_fd(e)) {
        snprintf(err, err_size, "cannot create event fd: %s", strerror(errno));
        return -1;
    }
    e->http = lk_http_new(e->cfg.endpoints, e->cfg.n_endpoints,
                          (long)e->cfg.timeout_ms);
    if (!e->http) {
        snprintf(err, err_size, "cannot initialise libcurl");
        return -1;
    }
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&e->thread, NULL, run, e);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc) {
        lk_http_free(e->http);
        e->http = NULL;
        snprintf(err, err_size, "cannot start engine thread: %s", strerror(rc));
        return -1;
    }
    e->started = 1;
    e->thread_pid = getpid();
    return 0;
}

/* Lua thread. Takes ownership of cmd. */
int lk_engine_submit(lk_engine *e, lk_cmd *cmd, char *err, size_t err_size)
{
    if (e->closed) {
        snprintf(err, err_size, "client is closed");
        lk_cmd_free(cmd);
        return -1;
    }
    if (ensure_started(e, err, err_size)) {
        lk_cmd_free(cmd);
        return -1;
    }
    lk_queue_push(e->commands, cmd);
    curl_multi_wakeup(lk_http_multi(e->http));
    return 0;
}

/* Lua thread. Clears the fd before taking, so no event is left unsignalled. */
lk_event *lk_engine_take_events(lk_engine *e)
{
    if (e->event_fd >= 0) {
        uint64_t n;
        ssize_t got = read(e->event_fd, &n, sizeof n);
        (void)got;
    }
    return lk_queue_take_all(e->events);
}

int lk_engine_closed(const lk_engine *e)
{
    return e->closed;
}

/* Lua thread: sends CLOSE and joins the engine thread. */
void lk_engine_close(lk_engine *e)
{
    if (e->closed) return;
    e->closed = 1;
    if (!e->started || e->thread_pid != getpid()) return;  /* not ours */
    lk_queue_push(e->commands, e->close_cmd);  /* made in advance: cannot fail */
    e->close_cmd = NULL;
    curl_multi_wakeup(lk_http_multi(e->http));
    pthread_join(e->thread, NULL);
    lk_http_free(e->http);
    e->http = NULL;
}

void lk_engine_free(lk_engine *e)
{
    if (!e) return;
    lk_engine_close(e);
    lk_cmd_free(e->close_cmd);
    lk_queue_free(e->commands, (void (*)(void *))lk_cmd_free);
    lk_queue_free(e->events, (void (*)(void *))lk_event_free);
    if (e->event_fd >= 0 && e->fd_pid == getpid()) close(e->event_fd);
    if (e->cache_ready) lk_cache_destroy(&e->cache);
    free_config(&e->cfg);
    free(e);
}
