#include "base/buf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int reserve(lk_buf *b, size_t extra)
{
    size_t need = b->len + extra + 1;
    if (need <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need) cap *= 2;
    char *p = realloc(b->data, cap);
    if (!p) return -1;
    b->data = p;
    b->cap = cap;
    return 0;
}

int lk_buf_append(lk_buf *b, const void *p, size_t n)
{
    if (reserve(b, n)) return -1;
    if (n) memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

int lk_buf_puts(lk_buf *b, const char *s)
{
    return lk_buf_append(b, s, strlen(s));
}

int lk_buf_printf(lk_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || reserve(b, (size_t)n)) return -1;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

int lk_buf_lines(lk_buf *b, int (*fn)(void *ctx, const char *line, size_t n),
                 void *ctx)
{
    size_t start = 0;
    int stop = 0;
    for (size_t i = 0; i < b->len && !stop; i++) {
        if (b->data[i] != '\n') continue;
        if (i > start) stop = fn(ctx, b->data + start, i - start);
        start = i + 1;
    }
    lk_buf_consume(b, start);
    return stop;
}

void lk_buf_shrink(lk_buf *b)
{
    if (b->cap <= 65536 || b->len > b->cap / 4) return;
    size_t cap = b->len + 1 > 4096 ? b->len + 1 : 4096;
    char *p = realloc(b->data, cap);
    if (!p) return;  /* keeping the larger block is fine */
    b->data = p;
    b->cap = cap;
}

void lk_buf_consume(lk_buf *b, size_t n)
{
    if (n >= b->len) {
        lk_buf_reset(b);
        return;
    }
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
    b->data[b->len] = '\0';
}

void lk_buf_reset(lk_buf *b)
{
    b->len = 0;
    if (b->data) b->data[0] = '\0';
}

void lk_buf_free(lk_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

void lk_buf_free_secret(lk_buf *b)
{
    if (b->data) explicit_bzero(b->data, b->cap ? b->cap : b->len);
    lk_buf_free(b);
}

void lk_free_secret(char *s)
{
    if (!s) return;
    explicit_bzero(s, strlen(s));  /* a memset before free may be elided */
    free(s);
}
