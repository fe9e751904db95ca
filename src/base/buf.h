/* Growable byte buffer: the one way C code here builds strings and bodies. */
#ifndef LK_BUF_H
#define LK_BUF_H

#include <stddef.h>

/* A byte string that is not NUL-safe to assume: pointer and length. */
typedef struct lk_bytes {
    const char *p;
    size_t n;
} lk_bytes;

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
/* Hands each complete newline-terminated line (without the newline;
 * empty lines skipped) to fn, then drops what was handed over; a partial
 * last line stays. Returns fn's first nonzero answer (the rest stays
 * too), or 0. */
int lk_buf_lines(lk_buf *b, int (*fn)(void *ctx, const char *line, size_t n),
                 void *ctx);
/* Gives back storage far larger than the content (after a big answer). */
void lk_buf_shrink(lk_buf *b);
/* Drops the first n bytes (consumed stream data). */
void lk_buf_consume(lk_buf *b, size_t n);
void lk_buf_reset(lk_buf *b);
/* Frees the storage; the buffer is empty and reusable afterwards. */
void lk_buf_free(lk_buf *b);
/* The same for a buffer that held a secret (a password, a token): all of
 * its storage is overwritten first. */
void lk_buf_free_secret(lk_buf *b);
/* Overwrites a NUL-terminated secret and frees it (NULL: nothing). */
void lk_free_secret(char *s);

#endif
