/* The etcd key layout, in one place. It is etcd's own (etcdctl lock and
 * elect, Go's concurrency package), so their contenders and ours queue
 * together:
 *
 *   prefix NAME "/"              the directory of NAME's contenders
 *   prefix NAME "/" hex(lease)   one contender, written with that lease;
 *                                its value is the contender's value, and
 *                                the owner is the lowest create_revision
 *   prefix "/probe"              the watch stream's liveness probe (no
 *                                name is empty, so it is nobody's key)
 *   prefix "/limit/" NAME "/" hex(lease)
 *                                a semaphore contender's limit N (decimal),
 *                                put and deleted with its contender key, on
 *                                the same lease; outside every NAME's range
 *   prefix "/released/" NAME     lock-delay's mark of a clean release: put
 *                                (value: the released contender key, on the
 *                                releaser's lease) in the txn that deletes
 *                                it; outside every NAME's directory
 *
 * A NAME has no '/' (it would reach into another name's directory). */
#ifndef LK_KEYS_H
#define LK_KEYS_H

#include <stdint.h>

#include "base/buf.h"

/* Each appends to out; 0, or -1 when memory ran out. */
int lk_key_dir(lk_buf *out, lk_bytes prefix, lk_bytes name);
int lk_key_contender(lk_buf *out, lk_bytes dir, int64_t lease);
int lk_key_probe(lk_buf *out, lk_bytes prefix);
int lk_key_released(lk_buf *out, lk_bytes prefix, lk_bytes name);
int lk_key_limit_dir(lk_buf *out, lk_bytes prefix, lk_bytes name);

/* The NAME whose directory key (a key under a prefix of prefix_len bytes)
 * is in: 1 with *name set (pointing into key), or 0 when the key is no
 * contender's (the probe, or no '/' after a non-empty name). */
int lk_key_name(lk_bytes key, size_t prefix_len, lk_bytes *name);
/* The NAME of a semaphore's limit key: 1 with *name set, or 0. */
int lk_key_limit_name(lk_bytes key, size_t prefix_len, lk_bytes *name);
/* The NAME of a clean release's mark: 1 with *name set, or 0. */
int lk_key_released_name(lk_bytes key, size_t prefix_len, lk_bytes *name);

#endif
