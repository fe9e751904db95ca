#include "keys.h"

#include <inttypes.h>
#include <string.h>

#define PROBE "/probe"

int lk_key_dir(lk_buf *out, lk_bytes prefix, lk_bytes name)
{
    return lk_buf_append(out, prefix.p, prefix.n) || lk_buf_append(out, name.p, name.n) ||
           lk_buf_append(out, "/", 1);
}

int lk_key_contender(lk_buf *out, lk_bytes dir, int64_t lease)
{
    /* lowercase hex without padding: what Go's %x and etcdctl write */
    return lk_buf_append(out, dir.p, dir.n) ||
           lk_buf_printf(out, "%" PRIx64, (uint64_t)lease);
}

int lk_key_probe(lk_buf *out, lk_bytes prefix)
{
    return lk_buf_append(out, prefix.p, prefix.n) || lk_buf_puts(out, PROBE);
}

int lk_key_name(lk_bytes key, size_t prefix_len, lk_bytes *name)
{
    if (key.n <= prefix_len) return 0;
    const char *start = key.p + prefix_len;
    const char *slash = memchr(start, '/', key.n - prefix_len);
    if (!slash || slash == start) return 0;
    *name = (lk_bytes){start, (size_t)(slash - start)};
    return 1;
}
