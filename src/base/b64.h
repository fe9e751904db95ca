/* Base64 (RFC 4648, with padding): etcd's gateway carries keys and values so. */
#ifndef LK_B64_H
#define LK_B64_H

#include "base/buf.h"

/* Appends the encoding of p[0..n) to out. 0 or -1 (out of memory). */
int lk_b64_encode(lk_buf *out, const void *p, size_t n);
/* Appends the decoding of s[0..n) to out. 0, or -1 on bad input or no
 * memory. Lenient in what it reads: padding may be missing, and the
 * URL-safe alphabet ("-_") is taken too. */
int lk_b64_decode(lk_buf *out, const char *s, size_t n);

#endif
