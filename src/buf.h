/* Growable byte buffer: the one way C code here builds strings and bodies. */
#ifndef LK_BUF_H
#define LK_BUF_H

#include <stddef.h>

typedef struct lk_buf {
    char *data;     /* always NUL-terminated when len > 0 or after any append */
    size_t len;
    size_t cap;
} lk_buf;

/* Each append returns 0 on success, -1 when memory ran out (buffer unchanged). */
int lk_buf_append(lk_buf *b, const void *p, size_t n);
int lk_buf_puts(lk_buf *b, const char *s);
int lk_buf_printf(lk_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Drops the first n bytes (consumed stream data). */
void lk_buf_consume(lk_buf *b, size_t n);
void lk_buf_reset(lk_buf *b);
/* Frees the storage; the buffer is empty and reusable afterwards. */
void lk_buf_free(lk_buf *b);

#endif
