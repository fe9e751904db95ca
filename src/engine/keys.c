#include "engine/keys.h"

#include <inttypes.h>
#include <string.h>

#define PROBE "/probe"
#define RELEASED "/released/"
#define LIMIT "/limit/"

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

int lk_key_released(lk_buf *out, lk_bytes prefix, lk_bytes name)
{
    return lk_buf_append(out, prefix.p, prefix.n) || lk_buf_puts(out, RELEASED) ||
           lk_buf_append(out, name.p, name.n);
}

int lk_key_limit_dir(lk_buf *out, lk_bytes prefix, lk_bytes name)
{
    return lk_buf_append(out, prefix.p, prefix.n) || lk_buf_puts(out, LIMIT) ||
           lk_buf_append(out, name.p, name.n) || lk_buf_puts(out, "/");
}

int lk_key_limit_name(lk_bytes key, size_t prefix_len, lk_bytes *name)
{
    size_t n = sizeof LIMIT - 1;
    if (key.n <= prefix_len + n || memcmp(key.p + prefix_len, LIMIT, n)) return 0;
    lk_bytes rest = {key.p + prefix_len + n, key.n - prefix_len - n};
    const char *slash = memchr(rest.p, '/', rest.n);
    if (!slash || slash == rest.p || slash + 1 == rest.p + rest.n) return 0;
    *name = (lk_bytes){rest.p, (size_t)(slash - rest.p)};
    return 1;
}

int lk_key_released_name(lk_bytes key, size_t prefix_len, lk_bytes *name)
{
    size_t n = sizeof RELEASED - 1;
    if (key.n <= prefix_len + n || memcmp(key.p + prefix_len, RELEASED, n)) return 0;
    *name = (lk_bytes){key.p + prefix_len + n, key.n - prefix_len - n};
    return memchr(name->p, '/', name->n) == NULL;
}
