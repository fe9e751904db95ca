/* get and list (see query.h). */
#include "engine/query.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/keys.h"

/* A decoded value, taken over by an event (never NULL: "" when empty). */
static char *take_value(lk_buf *b)
{
    char *p = b->data ? b->data : calloc(1, 1);
    *b = (lk_buf){0};
    return p;
}

static void on_get(lk_req *r)
{
    lk_io *io = r->owner;
    lk_range_resp range;
    if (lk_request_range(io, r, "get", &range)) return;
    lk_event *ev = lk_event_new(LK_EV_RESULT, r->id);
    lk_kv *owner = range.n ? &range.kvs[0] : NULL;
    if (ev) {
        ev->ok = 1;
        ev->revision = range.revision;
        if (owner) {
            ev->has_value = 1;
            ev->token = owner->create_rev;
            ev->value_len = owner->value.len;
            ev->value = owner->value.data;  /* taken over by the event */
            owner->value = (lk_buf){0};
        }
    }
    lk_range_resp_free(&range);
    lk_emit(io, ev);
}

/* read: any key's value and mod revision (absent: has_value 0) */
static void on_read(lk_req *r)
{
    lk_io *io = r->owner;
    lk_range_resp range;
    if (lk_request_range(io, r, "read", &range)) return;
    lk_kv *item = range.n ? &range.kvs[0] : NULL;
    lk_event *ev = lk_event_new(LK_EV_RESULT, r->id);
    if (ev) {
        ev->ok = 1;
        ev->revision = item ? item->mod_rev : range.revision;
        if (item) {
            ev->has_value = 1;
            ev->token = item->create_rev;
            ev->value_len = item->value.len;
            ev->value = take_value(&item->value);
        }
    }
    lk_range_resp_free(&range);
    lk_emit(io, ev);
}

static void read_command(lk_io *io, lk_cmd *c)
{
    lk_range_req q = lk_recipe_key((lk_bytes){c->name, c->name_len});
    lk_req *r = lk_send_range(io, &q, on_read, io, 0, 0);
    if (!r) {
        lk_emit_fail(io, c->id, LK_ERR_NOMEM, "read: out of memory");
        return;
    }
    r->id = c->id;
}

static void get_command(lk_io *io, lk_cmd *c)
{
    lk_buf dir = {0};
    lk_req *r = NULL;
    lk_range_req q;
    if (lk_key_dir(&dir, (lk_bytes){io->cfg.prefix, io->cfg.prefix_len},
                   (lk_bytes){c->name, c->name_len}) ||
        (q = lk_recipe_owner((lk_bytes){dir.data, dir.len}),
         !(r = lk_send_range(io, &q, on_get, io, 0, 0)))) {
        lk_emit_fail(io, c->id, LK_ERR_NOMEM, "get: out of memory");
    } else {
        r->id = c->id;
    }
    lk_buf_free(&dir);
}

static char *take_buf(lk_buf *b, size_t *len)
{
    char *p = b->data ? b->data : calloc(1, 1);
    *len = b->len;
    *b = (lk_buf){0};
    return p;
}

static void on_list(lk_req *r)
{
    lk_io *io = r->owner;
    lk_range_resp range;
    if (lk_request_range(io, r, "status", &range)) return;  /* never a partial list */
    lk_event *ev = lk_event_new(LK_EV_RESULT, r->id);
    if (ev && range.n > 0 && !(ev->kvs = calloc(range.n, sizeof *ev->kvs))) {
        lk_event_free(ev);
        ev = NULL;
    }
    if (!ev) {
        lk_range_resp_free(&range);
        lk_emit_fail(io, r->id, LK_ERR_NOMEM, "status: out of memory");
        return;
    }
    ev->ok = 1;
    ev->list = 1;
    ev->revision = range.revision;
    for (size_t i = 0; i < range.n; i++) {
        lk_kv *kv = &range.kvs[i];
        lk_bytes name, key = {kv->key.data, kv->key.len};
        int limit_key = 0;  /* neither a contender's key nor a limit (the probe): not listed */
        if (!lk_key_name(key, io->cfg.prefix_len, &name) &&
            !(limit_key = lk_key_limit_name(key, io->cfg.prefix_len, &name)))
            continue;
        lk_event_kv *o = &ev->kvs[ev->n_kvs++];
        o->limit_key = limit_key;
        o->name_off = (size_t)(name.p - kv->key.data);
        o->name_len = name.n;
        o->key = take_buf(&kv->key, &o->key_len);
        o->value = take_buf(&kv->value, &o->value_len);
        o->create_rev = kv->create_rev;
        o->mod_rev = kv->mod_rev;
        o->lease = kv->lease;
    }
    lk_range_resp_free(&range);
    lk_emit(io, ev);
}

static void list_command(lk_io *io, lk_cmd *c)
{
    lk_range_req q = lk_recipe_dir((lk_bytes){io->cfg.prefix, io->cfg.prefix_len});
    lk_req *r = lk_send_range(io, &q, on_list, io, 0, 0);
    if (!r) {
        lk_emit_fail(io, c->id, LK_ERR_NOMEM, "status: out of memory");
        return;
    }
    r->id = c->id;
}

void lk_query_command(lk_io *io, lk_cmd *c)
{
    if (c->kind == LK_CMD_GET) get_command(io, c);
    else if (c->kind == LK_CMD_READ) read_command(io, c);
    else list_command(io, c);
    lk_cmd_free(c);
}
