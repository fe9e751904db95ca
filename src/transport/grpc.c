/* etcd's requests and answers as protobuf in gRPC frames (see grpc.h). */
#include "transport/grpc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "etcd/recipes.h"   /* lk_etcd_prefix_end */
#include "transport/proto/rpc.pb-c.h"

typedef Etcdserverpb__RangeRequest RangeRequest;
typedef Etcdserverpb__PutRequest PutRequest;
typedef Etcdserverpb__DeleteRangeRequest DeleteRequest;
typedef Etcdserverpb__RequestOp RequestOp;
typedef Etcdserverpb__Compare Compare;

/* ---- frames ---- */

/* Appends m as one uncompressed frame. */
static int frame(lk_buf *out, const ProtobufCMessage *m)
{
    size_t n = protobuf_c_message_get_packed_size(m);
    if (n > 0xffffffffu) return -1;
    uint8_t *packed = malloc(LK_GRPC_PREFIX + n);
    if (!packed) return -1;
    packed[0] = 0;
    packed[1] = (uint8_t)(n >> 24);
    packed[2] = (uint8_t)(n >> 16);
    packed[3] = (uint8_t)(n >> 8);
    packed[4] = (uint8_t)n;
    protobuf_c_message_pack(m, packed + LK_GRPC_PREFIX);
    int rc = lk_buf_append(out, packed, LK_GRPC_PREFIX + n);
    free(packed);
    return rc;
}

int lk_grpc_frame(const char *data, size_t len, size_t max, const char **msg,
                  size_t *msg_len, size_t *used, char *why, size_t why_size)
{
    if (len < LK_GRPC_PREFIX) return LK_GRPC_PARTIAL;
    const unsigned char *p = (const unsigned char *)data;
    uint32_t n = (uint32_t)p[1] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 8 | p[4];
    if (p[0] != 0) {
        snprintf(why, why_size, "a compressed gRPC message (flag %u; none was asked for)", p[0]);
        return LK_GRPC_BAD;
    }
    if (n > max) {
        snprintf(why, why_size, "a gRPC message announcing %lu bytes (at most %zu are taken)",
                 (unsigned long)n, max);
        return LK_GRPC_BAD;
    }
    if (len - LK_GRPC_PREFIX < n) return LK_GRPC_PARTIAL;
    *msg = data + LK_GRPC_PREFIX;
    *msg_len = n;
    *used = LK_GRPC_PREFIX + (size_t)n;
    return LK_GRPC_FRAME;
}

/* ---- requests ---- */

static ProtobufCBinaryData bin(lk_bytes b)
{
    return (ProtobufCBinaryData){b.n, (uint8_t *)(uintptr_t)b.p};
}

/* key and, for a prefix, the end of every key under it (end holds it). */
static int key_range(lk_bytes key, int prefix, lk_buf *end, ProtobufCBinaryData *k,
                     ProtobufCBinaryData *range_end)
{
    *k = bin(key);
    if (!prefix) return 0;
    if (lk_etcd_prefix_end(end, key)) return -1;
    *range_end = (ProtobufCBinaryData){end->len, (uint8_t *)end->data};
    return 0;
}

static int range_msg(RangeRequest *m, const lk_range_req *r, lk_buf *end)
{
    etcdserverpb__range_request__init(m);
    if (key_range(r->key, r->prefix, end, &m->key, &m->range_end)) return -1;
    if (r->sort != LK_SORT_NONE) {
        m->sort_order = r->sort == LK_SORT_ASCEND ? ETCDSERVERPB__RANGE_REQUEST__SORT_ORDER__ASCEND
                                                  : ETCDSERVERPB__RANGE_REQUEST__SORT_ORDER__DESCEND;
        m->sort_target = ETCDSERVERPB__RANGE_REQUEST__SORT_TARGET__CREATE;
    }
    m->limit = r->limit;
    m->keys_only = r->keys_only;
    m->count_only = r->count_only;
    m->max_create_revision = r->max_create_rev;
    return 0;
}

static void put_msg(PutRequest *m, const lk_put_req *p)
{
    etcdserverpb__put_request__init(m);
    m->key = bin(p->key);
    m->value = bin(p->value);
    m->lease = p->lease;
}

int lk_grpc_range_body(lk_buf *out, const lk_range_req *r)
{
    RangeRequest m;
    lk_buf end = {0};
    int rc = range_msg(&m, r, &end) || frame(out, &m.base);
    lk_buf_free(&end);
    return rc ? -1 : 0;
}

int lk_grpc_put_body(lk_buf *out, const lk_put_req *p)
{
    PutRequest m;
    put_msg(&m, p);
    return frame(out, &m.base);
}

int lk_grpc_delete_body(lk_buf *out, const lk_delete_req *d)
{
    DeleteRequest m;
    etcdserverpb__delete_range_request__init(&m);
    m.key = bin(d->key);
    return frame(out, &m.base);
}

/* A txn's operations as messages: what they point to lives in parts (one
 * per operation) and ends (range ends); freed by free_ops. */
typedef struct op_parts {
    RequestOp op;
    RangeRequest range;
    PutRequest put;
    DeleteRequest del;
    lk_buf end;
} op_parts;

static op_parts *ops_msg(const lk_op *ops, size_t n, RequestOp ***list)
{
    op_parts *parts = calloc(n ? n : 1, sizeof *parts);
    *list = calloc(n ? n : 1, sizeof **list);
    if (!parts || !*list) goto fail;
    for (size_t i = 0; i < n; i++) {
        op_parts *o = &parts[i];
        etcdserverpb__request_op__init(&o->op);
        switch (ops[i].kind) {
        case LK_OP_RANGE:
            if (range_msg(&o->range, &ops[i].range, &o->end)) goto fail;
            o->op.request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_RANGE;
            o->op.request_range = &o->range;
            break;
        case LK_OP_PUT:
            put_msg(&o->put, &ops[i].put);
            o->op.request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_PUT;
            o->op.request_put = &o->put;
            break;
        case LK_OP_DELETE:
            etcdserverpb__delete_range_request__init(&o->del);
            o->del.key = bin(ops[i].del.key);
            o->op.request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_DELETE_RANGE;
            o->op.request_delete_range = &o->del;
            break;
        }
        (*list)[i] = &o->op;
    }
    return parts;
fail:
    for (size_t i = 0; parts && i < n; i++) lk_buf_free(&parts[i].end);
    free(parts);
    free(*list);
    *list = NULL;
    return NULL;
}

static void free_ops(op_parts *parts, size_t n, RequestOp **list)
{
    for (size_t i = 0; parts && i < n; i++) lk_buf_free(&parts[i].end);
    free(parts);
    free(list);
}

int lk_grpc_txn_body(lk_buf *out, const lk_txn_req *t)
{
    Etcdserverpb__TxnRequest m;
    etcdserverpb__txn_request__init(&m);
    int rc = -1;
    size_t nc = t->n_compare;
    Compare *cmp = calloc(nc ? nc : 1, sizeof *cmp);
    Compare **cmps = calloc(nc ? nc : 1, sizeof *cmps);
    lk_buf *ends = calloc(nc ? nc : 1, sizeof *ends);
    RequestOp **succ = NULL, **fail = NULL;
    op_parts *sp = NULL, *fp = NULL;
    if (!cmp || !cmps || !ends) goto done;
    for (size_t i = 0; i < nc; i++) {
        etcdserverpb__compare__init(&cmp[i]);
        if (key_range(t->compare[i].key, t->compare[i].prefix, &ends[i], &cmp[i].key,
                      &cmp[i].range_end))
            goto done;
        cmp[i].target = ETCDSERVERPB__COMPARE__COMPARE_TARGET__CREATE;
        cmp[i].result = ETCDSERVERPB__COMPARE__COMPARE_RESULT__EQUAL;
        cmp[i].target_union_case = ETCDSERVERPB__COMPARE__TARGET_UNION_CREATE_REVISION;
        cmp[i].create_revision = t->compare[i].create_rev;
        cmps[i] = &cmp[i];
    }
    if (!(sp = ops_msg(t->success, t->n_success, &succ)) ||
        !(fp = ops_msg(t->failure, t->n_failure, &fail)))
        goto done;
    m.n_compare = nc;
    m.compare = cmps;
    m.n_success = t->n_success;
    m.success = succ;
    m.n_failure = t->n_failure;
    m.failure = fail;
    rc = frame(out, &m.base);
done:
    for (size_t i = 0; ends && i < nc; i++) lk_buf_free(&ends[i]);
    free(ends);
    free(cmps);
    free(cmp);
    free_ops(sp, t->n_success, succ);
    free_ops(fp, t->n_failure, fail);
    return rc;
}

int lk_grpc_watch_body(lk_buf *out, const lk_watch_req *w)
{
    Etcdserverpb__WatchCreateRequest c;
    etcdserverpb__watch_create_request__init(&c);
    lk_buf end = {0};
    if (key_range(w->key, w->prefix, &end, &c.key, &c.range_end)) {
        lk_buf_free(&end);
        return -1;
    }
    c.start_revision = w->start_rev;
    c.progress_notify = 1;
    c.fragment = 1;
    Etcdserverpb__WatchRequest m;
    etcdserverpb__watch_request__init(&m);
    m.request_union_case = ETCDSERVERPB__WATCH_REQUEST__REQUEST_UNION_CREATE_REQUEST;
    m.create_request = &c;
    int rc = frame(out, &m.base);
    lk_buf_free(&end);
    return rc;
}

int lk_grpc_grant_body(lk_buf *out, int64_t ttl)
{
    Etcdserverpb__LeaseGrantRequest m;
    etcdserverpb__lease_grant_request__init(&m);
    m.ttl = ttl;
    return frame(out, &m.base);
}

int lk_grpc_lease_body(lk_buf *out, int64_t lease)
{
    /* LeaseKeepAliveRequest and LeaseRevokeRequest: the same one field */
    Etcdserverpb__LeaseKeepAliveRequest m;
    etcdserverpb__lease_keep_alive_request__init(&m);
    m.id = lease;
    return frame(out, &m.base);
}

int lk_grpc_auth_body(lk_buf *out, const char *user, const char *password)
{
    Etcdserverpb__AuthenticateRequest m;
    etcdserverpb__authenticate_request__init(&m);
    m.name = (char *)(uintptr_t)user;
    m.password = (char *)(uintptr_t)password;
    return frame(out, &m.base);
}

/* ---- answers ---- */

/* An allocator that refuses more than a message could honestly need: the
 * smallest encoding of a key-value or an event is a few bytes, its C
 * struct under 128, so a hostile message cannot make us spend more than
 * that ratio (plus a little) of what it weighs. */
typedef struct budget {
    size_t left;
} budget;

static void *budget_alloc(void *ud, size_t n)
{
    budget *b = ud;
    if (n > b->left) return NULL;
    b->left -= n;
    return malloc(n);
}

static void budget_free(void *ud, void *p)
{
    (void)ud;
    free(p);
}

static ProtobufCMessage *unpack(const ProtobufCMessageDescriptor *d, const char *p, size_t n,
                                budget *b, ProtobufCAllocator *a)
{
    b->left = 64 * n + 64 * 1024;
    *a = (ProtobufCAllocator){budget_alloc, budget_free, b};
    return protobuf_c_message_unpack(d, a, n, (const uint8_t *)p);
}

static int malformed(char *msg, size_t msg_size, const char *what)
{
    snprintf(msg, msg_size, "etcd sent a malformed gRPC answer: %s", what);
    return -1;
}

static int copy_bin(lk_buf *out, ProtobufCBinaryData d)
{
    return lk_buf_append(out, d.data ? (const char *)d.data : "", d.len);
}

static int copy_kv(lk_kv *kv, const Mvccpb__KeyValue *m)
{
    *kv = (lk_kv){0};
    if (!m) return -1;
    if (copy_bin(&kv->key, m->key) || copy_bin(&kv->value, m->value)) {
        lk_etcd_kv_free(kv);
        return -1;
    }
    kv->create_rev = m->create_revision;
    kv->mod_rev = m->mod_revision;
    kv->lease = m->lease;
    return 0;
}

static int64_t header_rev(const Etcdserverpb__ResponseHeader *h)
{
    return h ? h->revision : 0;
}

static int copy_range(lk_range_resp *out, const Etcdserverpb__RangeResponse *m)
{
    *out = (lk_range_resp){0};
    out->revision = header_rev(m->header);
    out->count = m->count;
    if (!m->n_kvs) return 0;
    if (!(out->kvs = calloc(m->n_kvs, sizeof *out->kvs))) return -1;
    for (size_t i = 0; i < m->n_kvs; i++) {
        if (copy_kv(&out->kvs[i], m->kvs[i])) {
            lk_range_resp_free(out);
            return -1;
        }
        out->n++;
    }
    return 0;
}

/* m, the message p..n as type (described by desc), or the malformed answer */
#define UNPACK(var, type, desc, what)                                                \
    budget b_;                                                                      \
    ProtobufCAllocator a_;                                                          \
    type *var = (type *)unpack(&desc, p, n, &b_, &a_);                             \
    if (!var) return malformed(msg, msg_size, "not a " what " (a wrong wire type, " \
                               "a truncated field, or too big to take)")
#define FREE(var) protobuf_c_message_free_unpacked(&var->base, &a_)

int lk_grpc_range(const char *p, size_t n, lk_range_resp *out, char *msg, size_t msg_size)
{
    *out = (lk_range_resp){0};
    UNPACK(m, Etcdserverpb__RangeResponse, etcdserverpb__range_response__descriptor, "RangeResponse");
    int rc = copy_range(out, m) ? malformed(msg, msg_size, "no memory for its keys") : 0;
    FREE(m);
    return rc;
}

int lk_grpc_txn(const char *p, size_t n, lk_txn_resp *out, char *msg, size_t msg_size)
{
    *out = (lk_txn_resp){0};
    UNPACK(m, Etcdserverpb__TxnResponse, etcdserverpb__txn_response__descriptor, "TxnResponse");
    int rc = 0;
    out->revision = header_rev(m->header);
    out->succeeded = m->succeeded;
    if (m->n_responses && !(out->ranges = calloc(m->n_responses, sizeof *out->ranges))) {
        rc = malformed(msg, msg_size, "no memory for its responses");
        goto done;
    }
    for (size_t i = 0; i < m->n_responses; i++) {
        const Etcdserverpb__ResponseOp *op = m->responses[i];
        /* a put's or a delete's response reads as an empty range */
        if (op->response_case == ETCDSERVERPB__RESPONSE_OP__RESPONSE_RESPONSE_RANGE &&
            copy_range(&out->ranges[i], op->response_range)) {
            rc = malformed(msg, msg_size, "no memory for its keys");
            goto done;
        }
        out->n++;
    }
done:
    if (rc) lk_txn_resp_free(out);
    FREE(m);
    return rc;
}

int lk_grpc_lease(const char *p, size_t n, lk_lease_resp *out, char *msg, size_t msg_size)
{
    *out = (lk_lease_resp){0};
    /* a keepalive's answer is a grant's without the error field */
    UNPACK(m, Etcdserverpb__LeaseGrantResponse, etcdserverpb__lease_grant_response__descriptor,
           "lease answer");
    int rc = 0;
    if (m->error && m->error[0]) {
        snprintf(msg, msg_size, "etcd refused the lease: %s", m->error);
        rc = -1;
    } else {
        *out = (lk_lease_resp){header_rev(m->header), m->id, m->ttl};
    }
    FREE(m);
    return rc;
}

int lk_grpc_plain(const char *p, size_t n, lk_plain_resp *out, char *msg, size_t msg_size)
{
    *out = (lk_plain_resp){0};
    /* every answer's header is field 1; the rest is skipped as unknown */
    UNPACK(m, Etcdserverpb__LeaseRevokeResponse, etcdserverpb__lease_revoke_response__descriptor, "response with a header");
    out->revision = header_rev(m->header);
    FREE(m);
    return 0;
}

int lk_grpc_watch(const char *p, size_t n, lk_watch_resp *out, char *msg, size_t msg_size)
{
    *out = (lk_watch_resp){0};
    UNPACK(m, Etcdserverpb__WatchResponse, etcdserverpb__watch_response__descriptor, "WatchResponse");
    int rc = 0;
    out->revision = header_rev(m->header);
    out->created = m->created;
    out->canceled = m->canceled;
    out->compact_revision = m->compact_revision;
    if (m->canceled)
        snprintf(out->cancel_reason, sizeof out->cancel_reason, "%s",
                 m->cancel_reason ? m->cancel_reason : "");
    if (m->n_events && !(out->events = calloc(m->n_events, sizeof *out->events))) {
        rc = malformed(msg, msg_size, "no memory for its events");
        goto done;
    }
    for (size_t i = 0; i < m->n_events; i++) {
        const Mvccpb__Event *e = m->events[i];
        lk_watch_event *to = &out->events[out->n];
        if (copy_kv(&to->kv, e->kv)) {
            rc = malformed(msg, msg_size, e->kv ? "no memory for an event"
                                                : "an event without its key-value");
            goto done;
        }
        to->deleted = e->type == MVCCPB__EVENT__EVENT_TYPE__DELETE;
        out->n++;
    }
done:
    if (rc) lk_watch_resp_free(out);
    FREE(m);
    return rc;
}

int lk_grpc_auth(const char *p, size_t n, lk_buf *token, char *msg, size_t msg_size)
{
    UNPACK(m, Etcdserverpb__AuthenticateResponse, etcdserverpb__authenticate_response__descriptor, "AuthenticateResponse");
    int rc = 0;
    if (!m->token || !m->token[0]) rc = malformed(msg, msg_size, "no token");
    else if (lk_buf_puts(token, m->token)) rc = malformed(msg, msg_size, "no memory");
    if (m->token) memset(m->token, 0, strlen(m->token));  /* a secret */
    FREE(m);
    return rc;
}

static int hex(int c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
         : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

void lk_grpc_unescape(char *s)
{
    char *to = s;
    for (const char *p = s; *p; p++) {
        int hi, lo;
        if (*p == '%' && (hi = hex(p[1])) >= 0 && (lo = hex(p[2])) >= 0) {
            *to++ = (char)(hi << 4 | lo);
            p += 2;
        } else {
            *to++ = *p;
        }
    }
    *to = '\0';
}
