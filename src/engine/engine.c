/* The engine thread: the curl multi loop, the command queue it serves and the
 * event queue it fills, and the client's lifetime (lazy start, close). It is
 * the top layer: it routes commands to locks, watches and queries, and the
 * session's news (hooks) to locks and watches, which never call each other
 * or up into this file. */
#include "engine/engine.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "engine/cache.h"
#include "engine/io.h"
#include "engine/lock.h"
#include "engine/query.h"
#include "engine/session.h"
#include "engine/wake.h"
#include "engine/watch.h"

#define IDLE_POLL_MS 1000

struct lk_engine {
    lk_io io;                  /* settings, http, events, counters */
    /* shared with the Lua thread */
    lk_queue *commands;
    pid_t owner_pid;           /* process that made the client */
    pid_t fd_pid;              /* process that made io.event_fd */
    int wake_listen_fd;        /* the wake-up socket before its accept */
    char wake_path[128];
    pthread_t thread;
    int started;
    pid_t thread_pid;          /* process that started the thread */
    int closed;                /* Lua side: close() was called */
    uint64_t next_id;
    lk_cmd *close_cmd;         /* allocated up front: close() cannot fail */
    lk_cache cache;            /* watched names' owner values (own mutex) */
    int cache_ready;
    /* engine thread only (the multi handle is made just before the thread
     * starts and, but for curl_multi_wakeup, used by the thread alone) */
    int stopping;              /* CLOSE received: finishing up */
    lk_session session;
    lk_locks locks;
    lk_watches watches;
    int64_t tokens_told;       /* auth tokens told as auth_renewed news */
};

/* ---- the session's news, routed to locks and watches ---- */

static void on_ready(void *ctx)
{
    lk_engine *e = ctx;
    lk_locks_session_ready(&e->locks);
}

static void on_failed(void *ctx, lk_err code, const char *msg)
{
    lk_engine *e = ctx;
    lk_locks_session_failed(&e->locks, code, msg);
}

static void on_lease_lost(void *ctx, const char *why)
{
    lk_engine *e = ctx;
    lk_locks_lease_lost(&e->locks, why);
}

static void on_renewed(void *ctx)
{
    lk_engine *e = ctx;
    lk_locks_renewed(&e->locks);
}

static void on_expired(void *ctx)
{
    lk_engine *e = ctx;
    lk_locks_expired(&e->locks);
}

static void on_stream_ready(void *ctx)
{
    lk_engine *e = ctx;
    lk_watches_stream_ready(&e->watches);
}

static void on_resync(void *ctx)
{
    lk_engine *e = ctx;
    lk_locks_resync(&e->locks);
    lk_watches_resync(&e->watches);
}

static void on_change(void *ctx, const lk_change *c)
{
    lk_engine *e = ctx;
    lk_locks_changed(&e->locks, c);
    lk_watches_changed(&e->watches, c);
}

static int wanted(void *ctx)
{
    lk_engine *e = ctx;
    return lk_locks_any(&e->locks) || lk_watches_any(&e->watches);
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
    free(c->cacert);
    free(c->cert);
    free(c->key);
    free(c->user);
    lk_free_secret(c->password);
}

/* A copy of an optional string (NULL stays NULL); -1 when out of memory. */
static int dup_opt(char **to, const char *from)
{
    *to = from ? strdup(from) : NULL;
    return from && !*to ? -1 : 0;
}

lk_engine *lk_engine_new(const lk_config *cfg, char *err, size_t err_size)
{
    lk_engine *e = calloc(1, sizeof *e);
    if (!e) goto nomem;
    e->io.event_fd = -1;
    e->io.wake_fd = -1;
    e->wake_listen_fd = -1;
    e->owner_pid = getpid();
    e->io.cfg = *cfg;
    e->io.cfg.endpoints = calloc((size_t)cfg->n_endpoints, sizeof(char *));
    e->io.cfg.n_endpoints = 0;
    e->io.cfg.prefix = dup_bytes(cfg->prefix, cfg->prefix_len);
    if (!e->io.cfg.endpoints || !e->io.cfg.prefix) goto nomem;
    if (dup_opt(&e->io.cfg.cacert, cfg->cacert) || dup_opt(&e->io.cfg.cert, cfg->cert) ||
        dup_opt(&e->io.cfg.key, cfg->key) || dup_opt(&e->io.cfg.user, cfg->user) ||
        dup_opt(&e->io.cfg.password, cfg->password))
        goto nomem;
    for (int i = 0; i < cfg->n_endpoints; i++) {
        e->io.cfg.endpoints[i] = dup_bytes(cfg->endpoints[i],
                                        strlen(cfg->endpoints[i]));
        if (!e->io.cfg.endpoints[i]) goto nomem;
        e->io.cfg.n_endpoints++;
    }
    e->commands = lk_queue_new();
    e->io.events = lk_queue_new();
    if (!e->commands || !e->io.events) goto nomem;
    if (lk_cache_init(&e->cache)) goto nomem;
    e->cache_ready = 1;
    if (!(e->close_cmd = lk_cmd_new(LK_CMD_CLOSE))) goto nomem;
    static const lk_session_hooks hooks = {
        .ready = on_ready, .failed = on_failed, .lease_lost = on_lease_lost,
        .renewed = on_renewed, .expired = on_expired,
        .stream_ready = on_stream_ready, .resync = on_resync,
        .change = on_change, .wanted = wanted, .proven = on_renewed,
    };
    lk_session_hooks h = hooks;
    h.ctx = e;
    lk_session_init(&e->session, &e->io, &h);
    lk_locks_init(&e->locks, &e->io, &e->session);
    lk_watches_init(&e->watches, &e->io, &e->session, &e->cache);
    return e;
nomem:
    snprintf(err, err_size, "out of memory creating the client");
    lk_engine_free(e);
    return NULL;
}

/* The event fd belongs to one process: a child after fork() gets its own. */
static int ensure_event_fd(lk_engine *e)
{
    if (e->io.event_fd >= 0 && e->fd_pid == getpid()) return 0;
    if (e->io.event_fd >= 0) close(e->io.event_fd);
    e->io.event_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    e->fd_pid = getpid();
    return e->io.event_fd >= 0 ? 0 : -1;
}

/* This process's pid, kept without a system call per question (glibc's
 * getpid() is one): set at start, and again in every child of a fork. */
static pid_t this_pid;

static void forked_child(void)
{
    __atomic_store_n(&this_pid, getpid(), __ATOMIC_RELAXED);
}

int lk_engine_foreign(const lk_engine *e)
{
    return e->owner_pid != __atomic_load_n(&this_pid, __ATOMIC_RELAXED);
}

/* Lua thread. */
const char *lk_engine_wake_listen(lk_engine *e, char *err, size_t err_size)
{
    if (e->io.wake_fd >= 0 || e->wake_listen_fd >= 0) {
        snprintf(err, err_size, "the client has a wake-up socket already");
        return NULL;
    }
    e->wake_listen_fd = lk_wake_listen(e->wake_path, sizeof e->wake_path,
                                       err, err_size);
    return e->wake_listen_fd >= 0 ? e->wake_path : NULL;
}

/* Lua thread. Publishes the connection's fd to the engine thread, and
 * signals it at once if events are already waiting. */
static int ensure_started(lk_engine *e, char *err, size_t err_size);

/* The engine starts here if it has not yet: its tick on the socket is what
 * says it is alive, so a client dispatched through one always ticks (an
 * idle one too). */
int lk_engine_wake_accept(lk_engine *e, char *err, size_t err_size)
{
    if (ensure_started(e, err, err_size)) return -1;
    if (e->wake_listen_fd < 0) {
        snprintf(err, err_size, "no wake-up socket is listening");
        return -1;
    }
    int fd = lk_wake_accept(e->wake_listen_fd, e->wake_path, err, err_size);
    e->wake_listen_fd = -1;
    if (fd < 0) return -1;
    __atomic_store_n(&e->io.wake_fd, fd, __ATOMIC_RELEASE);
    lk_wake_signal(fd);  /* whatever is queued now gets read */
    return 0;
}

int lk_engine_fd(const lk_engine *e)
{
    ensure_event_fd((lk_engine *)e);
    return e->io.event_fd;
}

lk_cache *lk_engine_cache(lk_engine *e)
{
    return &e->cache;
}

void lk_engine_stats(const lk_engine *e, lk_stats *out)
{
    out->requests = __atomic_load_n(&e->io.stats.requests, __ATOMIC_RELAXED);
    out->keepalives = __atomic_load_n(&e->io.stats.keepalives, __ATOMIC_RELAXED);
    out->stream_events = __atomic_load_n(&e->io.stats.stream_events, __ATOMIC_RELAXED);
    out->stream_connects = __atomic_load_n(&e->io.stats.stream_connects, __ATOMIC_RELAXED);
    out->authentications = __atomic_load_n(&e->io.stats.authentications, __ATOMIC_RELAXED);
}

/* Requests left a failed endpoint: news for on_event. */
static void failed_over(void *ctx, int from, int to)
{
    lk_io *io = ctx;
    char why[512];
    snprintf(why, sizeof why, "requests go to %s now", io->cfg.endpoints[to]);
    lk_note(io, "failover", io->cfg.endpoints[from], why);
}

void lk_engine_metrics(const lk_engine *e, lk_metrics *out)
{
    lk_metrics_read(&e->io.metrics, out);
}

void lk_engine_delivered(lk_engine *e, const lk_event *ev)
{
    lk_metrics *m = &e->io.metrics;
    if (ev->skipped > 0) lk_metric_add(&m->folded, ev->skipped);
    if (ev->kind == LK_EV_NOTE) __atomic_sub_fetch(&e->io.notes_pending, 1, __ATOMIC_RELAXED);
    if (ev->kind == LK_EV_WATCH && ev->made_us)
        lk_hist_observe(&m->delivery_seconds, lk_now_us() - ev->made_us);
}

int64_t lk_engine_lease(const lk_engine *e)
{
    return __atomic_load_n(&e->session.view.lease, __ATOMIC_ACQUIRE);
}

void lk_engine_session(const lk_engine *e, lk_session_view *out)
{
    lk_session_view_read(&e->session.view, out);
}

const char *lk_engine_endpoint(const lk_engine *e, int i)
{
    if (i < 0 || i >= e->io.cfg.n_endpoints) i = 0;
    return e->io.cfg.endpoints[i];
}

static void global_init(void)
{
    forked_child();
    pthread_atfork(NULL, NULL, forked_child);
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

void lk_engine_global_init(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, global_init);
}

uint64_t lk_engine_next_id(lk_engine *e)
{
    return ++e->next_id;
}

static void serve(lk_engine *e, lk_cmd *c)
{
    if (c->kind == LK_CMD_CLOSE) {
        if (!e->stopping) {
            e->stopping = 1;
            lk_locks_close(&e->locks);
            lk_watches_close(&e->watches);
            lk_session_stop(&e->session);
        }
        lk_cmd_free(c);
        return;
    }
    if (e->stopping) {
        lk_emit_fail(&e->io, c->id, LK_ERR_CLOSED, "client is closed");
        lk_cmd_free(c);
        return;
    }
    switch (c->kind) {
    case LK_CMD_WATCH: case LK_CMD_UNWATCH: case LK_CMD_WATCH_ALL: case LK_CMD_UNWATCH_ALL:
        lk_watches_command(&e->watches, c);
        break;
    case LK_CMD_GET: case LK_CMD_LIST: case LK_CMD_READ: lk_query_command(&e->io, c); break;
    default: lk_locks_command(&e->locks, c); break;
    }
}

/* The engine thread's body: owns the multi handle and everything on it. */
static void *run(void *arg)
{
    lk_engine *e = arg;
    int64_t tick_at = 0;
    for (;;) {
        lk_cmd *c = lk_queue_take_all(e->commands);
        while (c) {
            lk_cmd *next = c->next;
            serve(e, c);
            c = next;
        }
        if (e->stopping && !lk_session_busy(&e->session)) break;
        int64_t now = lk_now_ms();
        int64_t next = now + IDLE_POLL_MS;
        /* the wake-up socket's slow tick: the engine is alive */
        int wake = __atomic_load_n(&e->io.wake_fd, __ATOMIC_ACQUIRE);
        if (wake >= 0 && now >= tick_at) {
            lk_wake_signal(wake);
            tick_at = now + LK_WAKE_TICK_MS;
        }
        if (wake >= 0 && tick_at < next) next = tick_at;
        /* a new token from etcd (the transport keeps it): news */
        int64_t tokens = __atomic_load_n(&e->io.stats.tokens, __ATOMIC_RELAXED);
        if (tokens != e->tokens_told) {
            e->tokens_told = tokens;
            lk_note(&e->io, "auth_renewed", NULL, tokens == 1 ? "authenticated: etcd gave a token"
                                                               : "etcd gave a new token");
        }
        if (!e->stopping) {
            int64_t t = lk_session_tick(&e->session, now);
            if (t && t < next) next = t;
            t = lk_locks_tick(&e->locks, now);
            if (t && t < next) next = t;
            t = lk_watches_tick(&e->watches, now);
            if (t && t < next) next = t;
        }
        /* also while stopping: a revoke may rest, or wait for a token */
        int64_t t = lk_http_next_wakeup(e->io.http);
        if (t && t < next) next = t;
        int wait = next > now ? (int)(next - now) : 0;
        curl_multi_poll(lk_http_multi(e->io.http), NULL, 0, wait, NULL);
        lk_http_perform(e->io.http);
    }
    /* e->io.http stays: the Lua thread may still wake it; it frees it after
     * joining */
    return NULL;
}

/* Lua thread. Starts the engine thread with every signal blocked in it. */
static int ensure_started(lk_engine *e, char *err, size_t err_size)
{
    if (e->owner_pid != getpid()) {
        snprintf(err, err_size, "client made in process %d used in process %d "
                 "(after fork): make a new client in each process (nginx: in "
                 "init_worker_by_lua, not init_by_lua)", (int)e->owner_pid, (int)getpid());
        return -1;
    }
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
    e->io.wire = lk_wire_of(&e->io.cfg);
    e->io.http = lk_http_new(&e->io.cfg, (long)e->io.cfg.timeout_ms);
    if (e->io.http && e->io.cfg.user &&
        !(e->io.auth = lk_auth_new(e->io.http, &e->io.cfg, &e->io.stats))) {
        lk_http_free(e->io.http);
        e->io.http = NULL;
    }
    if (!e->io.http) {
        snprintf(err, err_size, "cannot initialise libcurl");
        return -1;
    }
#ifndef LK_NO_METRICS
    lk_http_set_metrics(e->io.http, &e->io.metrics);
#endif
    lk_http_on_failover(e->io.http, failed_over, &e->io);
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&e->thread, NULL, run, e);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc) {
        lk_http_free(e->io.http);
        e->io.http = NULL;
        lk_auth_free(e->io.auth);
        e->io.auth = NULL;
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
    curl_multi_wakeup(lk_http_multi(e->io.http));
    return 0;
}

/* Lua thread. Clears the fd before taking, so no event is left unsignalled. */
lk_event *lk_engine_take_events(lk_engine *e)
{
    if (e->io.event_fd >= 0) {
        uint64_t n;
        ssize_t got = read(e->io.event_fd, &n, sizeof n);
        (void)got;
    }
    return lk_queue_take_all(e->io.events);
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
    curl_multi_wakeup(lk_http_multi(e->io.http));
    pthread_join(e->thread, NULL);
    if (e->io.wake_fd >= 0) {  /* the reader sees the end of the stream */
        close(e->io.wake_fd);
        e->io.wake_fd = -1;
    }
    lk_http_free(e->io.http);
    e->io.http = NULL;
    lk_auth_free(e->io.auth);  /* after http: its request was http's */
    e->io.auth = NULL;
}

void lk_engine_free(lk_engine *e)
{
    if (!e) return;
    lk_engine_close(e);
    lk_cmd_free(e->close_cmd);
    lk_queue_free(e->commands, (void (*)(void *))lk_cmd_free);
    lk_queue_free(e->io.events, (void (*)(void *))lk_event_free);
    if (e->io.event_fd >= 0 && e->fd_pid == getpid()) close(e->io.event_fd);
    if (e->owner_pid == getpid()) {  /* a forked child leaves them alone */
        if (e->wake_listen_fd >= 0) lk_wake_abandon(e->wake_listen_fd, e->wake_path);
        if (e->io.wake_fd >= 0) close(e->io.wake_fd);
    }
    if (e->cache_ready) lk_cache_destroy(&e->cache);
    free_config(&e->io.cfg);
    free(e);
}
