/* A command that cannot outlive its supervisor (locker lock -- CMD).
 *
 * The supervisor forks a small guard process, which forks the command in a
 * process group of its own and then only waits. The command's group gets
 * SIGKILL from the guard when
 *   - the supervisor dies (the watchdog pipe reaches end of file, or the
 *     guard's parent-death signal arrives), or
 *   - the watchdog deadline passes without the supervisor moving it
 *     (a stopped or starved supervisor: its lock ends at that deadline),
 * and, after the command itself ends, whatever it left in its group.
 * Signals sent to the guard are passed on to the command's group. The
 * command gets SIGKILL as its parent-death signal too, should the guard
 * itself be killed. No Lua here. */
#ifndef LK_GUARD_H
#define LK_GUARD_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct lk_guarded {
    pid_t guard;    /* reap this one: its exit status is the command's */
    pid_t group;    /* the command's pid and process group id */
    int watchdog;   /* write end of the watchdog pipe, non-blocking */
} lk_guarded;

/* Starts argv[0] (searched in PATH) under a guard, with the environment
 * plus extra "NAME=value" strings, default signal handling, an empty signal
 * mask, and a watchdog deadline at deadline_ms on lk_now_ms()'s clock.
 * Returns 0 with *out filled once the command was executed, or -1 with err
 * filled ("cannot run CMD: reason") and nothing left running. */
int lk_guard_spawn(char *const argv[], char *const extra_env[], int64_t deadline_ms,
                   lk_guarded *out, char *err, size_t err_size);

/* Moves the watchdog deadline to deadline_ms (later or earlier); 0, or -1
 * when the guard cannot be told (it is gone). */
int lk_guard_extend(int watchdog, int64_t deadline_ms);

#endif
