/* The wake-up socket (see wake.h). */
#define _GNU_SOURCE  /* accept4 */
#include "engine/wake.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* The private directory: $TMPDIR or /tmp, mode 0700 (mkdtemp). */
static int make_dir(char *dir, size_t size)
{
    const char *base = getenv("TMPDIR");
    if (!base || !*base) base = "/tmp";
    int n = snprintf(dir, size, "%s/locker-wake.XXXXXX", base);
    if (n < 0 || (size_t)n >= size) return -1;
    return mkdtemp(dir) ? 0 : -1;
}

static void remove_path(const char *path)
{
    char dir[sizeof ((struct sockaddr_un *)0)->sun_path];
    unlink(path);
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash) {
        *slash = '\0';
        rmdir(dir);
    }
}

int lk_wake_listen(char *path, size_t path_size, char *err, size_t err_size)
{
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    char dir[sizeof sa.sun_path - 8];
    if (make_dir(dir, sizeof dir)) {
        snprintf(err, err_size, "wake-up socket: cannot make a private directory: %s",
                 strerror(errno));
        return -1;
    }
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s/s", dir);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) goto fail;
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) || listen(fd, 1)) goto fail;
    snprintf(path, path_size, "%s", sa.sun_path);
    return fd;
fail:
    snprintf(err, err_size, "wake-up socket: %s", strerror(errno));
    if (fd >= 0) close(fd);
    remove_path(sa.sun_path);
    return -1;
}

int lk_wake_accept(int listen_fd, const char *path, char *err, size_t err_size)
{
    int fd = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0)
        snprintf(err, err_size, "wake-up socket: nobody connected: %s", strerror(errno));
    lk_wake_abandon(listen_fd, path);
    /* the engine only writes: no input is expected, none is kept */
    if (fd >= 0) shutdown(fd, SHUT_RD);
    return fd;
}

void lk_wake_abandon(int listen_fd, const char *path)
{
    if (listen_fd >= 0) close(listen_fd);
    remove_path(path);
}

void lk_wake_signal(int fd)
{
    char b = 1;
    ssize_t n = send(fd, &b, 1, MSG_DONTWAIT | MSG_NOSIGNAL);
    (void)n;  /* EAGAIN: bytes are waiting already; EPIPE: the reader left */
}
