/* Backoff with jitter for every retry loop of the engine. Any thread. */
#ifndef LK_BACKOFF_H
#define LK_BACKOFF_H

#include <stdint.h>

/* How long to wait before try number failures + 1 of something that
 * failed: min_ms doubled per failure, capped at max_ms, with random jitter
 * (between half and all of it), so clients that failed together do not
 * retry together. */
int64_t lk_backoff_ms(int failures, int64_t min_ms, int64_t max_ms);

#endif
