/* The wake-up socket: how the engine tells an event loop that cannot poll
 * an arbitrary fd (nginx: its cosockets connect to addresses, they do not
 * adopt descriptors) that events are waiting. The loop connects to a unix
 * socket that the client listens on, in a private directory; the client
 * accepts that one connection and removes the path at once, so only the
 * two ends of one connection remain. The engine then writes one byte per
 * empty -> non-empty transition of the event queue, and a tick byte at
 * least every LK_WAKE_TICK_MS, so the reader also learns that the engine
 * is alive. Any thread; the descriptors are plain ints. */
#ifndef LK_WAKE_H
#define LK_WAKE_H

#include <stddef.h>

#define LK_WAKE_TICK_MS 250

/* Listens on a fresh unix socket in a new private directory; fills path.
 * The listening fd, or -1 with err filled. */
int lk_wake_listen(char *path, size_t path_size, char *err, size_t err_size);

/* Accepts the one connection (it must already have been made: never
 * blocks), closes the listener and removes path and its directory. The
 * connection's fd, or -1 with err filled. */
int lk_wake_accept(int listen_fd, const char *path, char *err, size_t err_size);

/* Gives up a listener that was never accepted (path and directory go). */
void lk_wake_abandon(int listen_fd, const char *path);

/* One byte to the reader; a full socket already says "readable". */
void lk_wake_signal(int fd);

#endif
