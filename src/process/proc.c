#include "process/proc.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

char **lk_proc_environ(char *const extra_env[])
{
    size_t n_env = 0, n_extra = 0;
    while (environ[n_env]) n_env++;
    while (extra_env && extra_env[n_extra]) n_extra++;
    char **envp = calloc(n_env + n_extra + 1, sizeof *envp);
    if (!envp) return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n_env; i++) {
        int replaced = 0;  /* an extra NAME=... overrides the inherited one */
        for (size_t j = 0; j < n_extra && !replaced; j++) {
            const char *eq = strchr(extra_env[j], '=');
            size_t len = eq ? (size_t)(eq - extra_env[j]) : strlen(extra_env[j]);
            replaced = !strncmp(environ[i], extra_env[j], len) && environ[i][len] == '=';
        }
        if (!replaced) envp[k++] = environ[i];
    }
    for (size_t j = 0; j < n_extra; j++) envp[k++] = extra_env[j];
    envp[k] = NULL;
    return envp;
}

/* posix_spawn, not fork: the engine thread may hold locks (malloc's) that
 * a forked child could never release. */
pid_t lk_proc_spawn(char *const argv[], char *const extra_env[], char *err,
                    size_t err_size)
{
    char **envp = lk_proc_environ(extra_env);
    if (!envp) {
        snprintf(err, err_size, "out of memory");
        return -1;
    }
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &all);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    pid_t pid;
    int rc = posix_spawnp(&pid, argv[0], NULL, &attr, argv, envp);
    posix_spawnattr_destroy(&attr);
    free(envp);
    if (rc) {
        snprintf(err, err_size, "cannot run %s: %s", argv[0], strerror(rc));
        return -1;
    }
    return pid;
}

int lk_proc_reap(pid_t pid, int *status)
{
    int st;
    pid_t r = waitpid(pid, &st, WNOHANG);
    if (r == 0) return 0;
    if (r < 0) return -1;
    *status = WIFEXITED(st) ? WEXITSTATUS(st)
            : WIFSIGNALED(st) ? 128 + WTERMSIG(st) : 1;
    return 1;
}

int lk_signal_fd(const int *signals, int n)
{
    sigset_t set;
    sigemptyset(&set);
    for (int i = 0; i < n; i++) sigaddset(&set, signals[i]);
    if (pthread_sigmask(SIG_BLOCK, &set, NULL)) return -1;
    return signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
}

int lk_signal_read(int fd)
{
    struct signalfd_siginfo info;
    ssize_t n = read(fd, &info, sizeof info);
    return n == (ssize_t)sizeof info ? (int)info.ssi_signo : 0;
}

int lk_signal_number(const char *name)
{
    static const struct { const char *name; int num; } table[] = {
        {"HUP", SIGHUP}, {"INT", SIGINT}, {"QUIT", SIGQUIT}, {"KILL", SIGKILL},
        {"USR1", SIGUSR1}, {"USR2", SIGUSR2}, {"TERM", SIGTERM},
        {"CHLD", SIGCHLD}, {"CONT", SIGCONT}, {"STOP", SIGSTOP},
    };
    if (!strncasecmp(name, "SIG", 3)) name += 3;
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (!strcasecmp(name, table[i].name)) return table[i].num;
    char *end;
    long v = strtol(name, &end, 10);
    return *name && !*end && v > 0 && v < 65 ? (int)v : -1;
}
