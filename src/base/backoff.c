/* Backoff with jitter (see backoff.h). */
#include "base/backoff.h"

#include "base/clock.h"

/* xorshift64*, one state per thread, seeded from the clock and the thread */
static uint64_t random64(void)
{
    static __thread uint64_t x;
    if (!x) x = ((uint64_t)lk_now_ms() << 20) ^ (uint64_t)(uintptr_t)&x ^ 0x9e3779b97f4a7c15u;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    return x * 0x2545f4914f6cdd1du;
}

int64_t lk_backoff_ms(int failures, int64_t min_ms, int64_t max_ms)
{
    int64_t ms = min_ms;
    for (int i = 1; i < failures && ms < max_ms; i++) ms *= 2;
    if (ms > max_ms) ms = max_ms;
    int64_t half = ms / 2;
    return half + (half > 0 ? (int64_t)(random64() % (uint64_t)(half + 1)) : 0);
}
