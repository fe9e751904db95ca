/* Child processes and signals for the command-line tool (locker lock,
 * locker hold): spawn with extra environment, signal, reap; signals turned
 * into a pollable fd so that the scheduler can wait on them. No Lua here. */
#ifndef LK_PROC_H
#define LK_PROC_H

#include <stddef.h>
#include <sys/types.h>

/* The current environment with extra "NAME=value" strings added or
 * overriding (NULL-terminated); a calloc'd array of borrowed strings, or
 * NULL when out of memory. */
char **lk_proc_environ(char *const extra_env[]);

/* Starts argv[0] (searched in PATH) with the current environment plus
 * extra "NAME=value" strings (NULL-terminated), default signal handling and
 * an empty signal mask. Returns the pid, or -1 with err filled. */
pid_t lk_proc_spawn(char *const argv[], char *const extra_env[], char *err,
                    size_t err_size);

/* Reaps pid without blocking: 0 while it runs; 1 when it ended, with
 * *status its exit code (128 + signal number when a signal ended it);
 * -1 when pid is not our child. */
int lk_proc_reap(pid_t pid, int *status);

/* Blocks the given signals in the calling thread and returns a signalfd
 * that becomes readable when one arrives (-1 on failure). */
int lk_signal_fd(const int *signals, int n);
/* Reads one pending signal from the fd: its number, or 0 when none. */
int lk_signal_read(int fd);

/* Number of a signal name ("TERM", "SIGTERM", "9"), or -1. */
int lk_signal_number(const char *name);

#endif
