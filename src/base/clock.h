/* The one clock of the library: milliseconds on CLOCK_BOOTTIME, which keeps
 * counting while the machine is suspended (CLOCK_MONOTONIC stops), so a
 * deadline computed before a suspend or a SIGSTOP is still right after it.
 * Any thread. */
#ifndef LK_CLOCK_H
#define LK_CLOCK_H

#include <stdint.h>
#include <time.h>

static inline int64_t lk_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_BOOTTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The same clock in microseconds (for latency histograms). */
static inline int64_t lk_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_BOOTTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

#endif
