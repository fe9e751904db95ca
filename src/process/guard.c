#ifndef _GNU_SOURCE
#define _GNU_SOURCE  /* close_range, execvpe, pipe2 */
#endif
#include "process/guard.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/clock.h"
#include "process/proc.h"

/* What the guard and the command tell the supervisor on the report pipe
 * before it reaches end of file (the command executed, the guard closed
 * its end): the command's pid, or why it could not run. */
typedef struct report {
    int32_t tag;    /* 'P': value is the command's pid; 'E': an errno */
    int32_t value;
} report;

/* Everything after fork() below runs in a copy of a threaded process:
 * only async-signal-safe calls (no malloc, no stdio) until exec or _exit. */

static void tell(int fd, int32_t tag, int32_t value)
{
    report r = { tag, value };
    ssize_t n;
    do n = write(fd, &r, sizeof r); while (n < 0 && errno == EINTR);
}

static void say(const char *s)
{
    ssize_t n;
    do n = write(2, s, strlen(s)); while (n < 0 && errno == EINTR);
}

/* The command's side: parent-death signal, own group, clean signals. */
static void run_command(char *const argv[], char **envp, pid_t guard, int report_fd)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != guard) _exit(127);  /* the guard died before prctl */
    setpgid(0, 0);
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    for (int s = 1; s < NSIG; s++) sigaction(s, &dfl, NULL);  /* KILL, STOP: EINVAL */
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    execvpe(argv[0], argv, envp);
    tell(report_fd, 'E', errno);
    _exit(127);
}

/* Ends the command's group and the guard with the command's status. */
static void finish(pid_t cmd, int reaped, int status)
{
    kill(-cmd, SIGKILL);  /* before the reap: the group id stays ours */
    if (!reaped) {
        while (waitpid(cmd, &status, 0) < 0 && errno == EINTR) {}
    }
    kill(-cmd, SIGKILL);
    _exit(WIFEXITED(status) ? WEXITSTATUS(status)
          : WIFSIGNALED(status) ? 128 + WTERMSIG(status) : 1);
}

static void guard_main(char *const argv[], char **envp, pid_t supervisor,
                       int watchdog, int report_fd, int64_t deadline)
{
    sigset_t all;
    sigfillset(&all);
    sigprocmask(SIG_SETMASK, &all, NULL);  /* read below, by signalfd */
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != supervisor) _exit(137);  /* it died before prctl */
    pid_t me = getpid();
    pid_t cmd = fork();
    if (cmd == 0) {
        close(watchdog);
        run_command(argv, envp, me, report_fd);
    }
    if (cmd < 0) {
        tell(report_fd, 'E', errno);
        _exit(127);
    }
    setpgid(cmd, cmd);  /* also here: no signal to -cmd may miss the group */
    tell(report_fd, 'P', cmd);
    close(report_fd);
    /* nothing else of the supervisor's stays open here: its etcd
     * connections, wake and signal fds are its own */
    if (watchdog != 3) {
        dup2(watchdog, 3);
        close(watchdog);
        watchdog = 3;
    }
    if (close_range(4, ~0U, 0) < 0) {
        for (int fd = 4; fd < 1024; fd++) close(fd);
    }
    int sfd = signalfd(-1, &all, SFD_CLOEXEC);
    for (;;) {
        int64_t left = deadline - lk_now_ms();
        if (left <= 0) {
            say("locker: watchdog: no word from locker by the lock's local deadline: "
                "the command and its process group get SIGKILL\n");
            finish(cmd, 0, 0);
        }
        struct pollfd p[2] = { { watchdog, POLLIN, 0 }, { sfd, POLLIN, 0 } };
        int n = poll(p, sfd < 0 ? 1 : 2, left > 1000 ? 1000 : (int)left);
        if (n < 0 && errno != EINTR) finish(cmd, 0, 0);
        if (p[0].revents) {
            int64_t msgs[64];
            ssize_t got = read(watchdog, msgs, sizeof msgs);
            if (got == 0 || (got < 0 && errno != EINTR && errno != EAGAIN))
                finish(cmd, 0, 0);  /* the supervisor is gone */
            /* writes of 8 bytes are atomic: whole messages only */
            if (got >= (ssize_t)sizeof msgs[0])
                deadline = msgs[got / (ssize_t)sizeof msgs[0] - 1];
        }
        if (sfd >= 0 && p[1].revents) {
            struct signalfd_siginfo si;
            if (read(sfd, &si, sizeof si) != (ssize_t)sizeof si) continue;
            int sig = (int)si.ssi_signo;
            if (sig == SIGCHLD) {
                int status;
                if (waitpid(cmd, &status, WNOHANG) == cmd) finish(cmd, 1, status);
            } else if (sig == SIGTERM && getppid() != supervisor) {
                finish(cmd, 0, 0);  /* the parent-death signal */
            } else {
                kill(-cmd, sig);
            }
        }
    }
}

int lk_guard_spawn(char *const argv[], char *const extra_env[], int64_t deadline_ms,
                   lk_guarded *out, char *err, size_t err_size)
{
    char **envp = lk_proc_environ(extra_env);
    int wd[2] = { -1, -1 }, rp[2] = { -1, -1 };
    if (!envp || pipe2(wd, O_CLOEXEC) < 0 || pipe2(rp, O_CLOEXEC) < 0) {
        snprintf(err, err_size, "cannot run %s: %s", argv[0],
                 envp ? strerror(errno) : "out of memory");
        free(envp);
        if (wd[0] >= 0) { close(wd[0]); close(wd[1]); }
        return -1;
    }
    pid_t supervisor = getpid();
    pid_t guard = fork();
    if (guard == 0) {
        close(wd[1]);
        close(rp[0]);
        guard_main(argv, envp, supervisor, wd[0], rp[1], deadline_ms);
    }
    int fork_errno = errno;
    free(envp);
    close(wd[0]);
    close(rp[1]);
    pid_t cmd = -1;
    int run_errno = guard < 0 ? fork_errno : 0;
    report r;
    ssize_t n;
    while (guard > 0 && ((n = read(rp[0], &r, sizeof r)) > 0 || (n < 0 && errno == EINTR))) {
        if (n != (ssize_t)sizeof r) continue;
        if (r.tag == 'P') cmd = r.value;
        else if (r.tag == 'E') run_errno = r.value;
    }
    close(rp[0]);
    if (guard > 0 && cmd > 0 && !run_errno) {
        fcntl(wd[1], F_SETFL, O_NONBLOCK);
        out->guard = guard;
        out->group = cmd;
        out->watchdog = wd[1];
        return 0;
    }
    close(wd[1]);  /* a guard still running sees end of file and ends */
    if (guard > 0) {
        while (waitpid(guard, NULL, 0) < 0 && errno == EINTR) {}
    }
    snprintf(err, err_size, "cannot run %s: %s", argv[0],
             strerror(run_errno ? run_errno : ECHILD));
    return -1;
}

int lk_guard_extend(int watchdog, int64_t deadline_ms)
{
    ssize_t n;
    do n = write(watchdog, &deadline_ms, sizeof deadline_ms); while (n < 0 && errno == EINTR);
    return n == (ssize_t)sizeof deadline_ms || (n < 0 && errno == EAGAIN) ? 0 : -1;
}
