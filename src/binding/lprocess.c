/* locker.process: child processes, signals and process memory, for the
 * command-line tool, the demo and the tests; a binding of src/process/proc.c, kept
 * apart from locker.core (which only the public module loads). */
#include <errno.h>
#include <malloc.h>
#include <signal.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#include "binding/compat.h"
#include "base/clock.h"
#include "process/guard.h"
#include "process/proc.h"

/* argv and extra_env (tables of strings at 1 and 2) as NULL-terminated
 * arrays in userdata on the stack; the tables keep the strings alive. */
static void check_command(lua_State *L, char ***argv, char ***env)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    int n = (int)lua_rawlen(L, 1);
    luaL_argcheck(L, n > 0, 1, "empty command");
    int m = lua_istable(L, 2) ? (int)lua_rawlen(L, 2) : 0;
    *argv = lua_newuserdata(L, sizeof(char *) * (size_t)(n + 1));
    *env = lua_newuserdata(L, sizeof(char *) * (size_t)(m + 1));
    for (int i = 0; i < n; i++) {
        lua_rawgeti(L, 1, i + 1);
        (*argv)[i] = (char *)luaL_checkstring(L, -1);
        lua_pop(L, 1);
    }
    (*argv)[n] = NULL;
    for (int i = 0; i < m; i++) {
        lua_rawgeti(L, 2, i + 1);
        (*env)[i] = (char *)luaL_checkstring(L, -1);
        lua_pop(L, 1);
    }
    (*env)[m] = NULL;
}

/* process.spawn(argv, extra_env) -> pid | nil, msg */
static int l_spawn(lua_State *L)
{
    char **argv, **env;
    check_command(L, &argv, &env);
    char err[256];
    pid_t pid = lk_proc_spawn(argv, env, err, sizeof err);
    if (pid < 0) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    lua_pushinteger(L, pid);
    return 1;
}

static int64_t deadline_arg(lua_State *L, int i)
{
    lua_Number s = luaL_checknumber(L, i);
    luaL_argcheck(L, s == s, i, "seconds, not NaN");
    if (s < 0) s = 0;
    if (s > 86400.0 * 365) s = 86400.0 * 365;
    return lk_now_ms() + (int64_t)(s * 1000);
}

/* process.supervise(argv, extra_env, seconds) -> guard pid, group, watchdog
 * | nil, msg: argv under a guard (src/process/guard.h) whose watchdog fires in
 * `seconds` unless process.extend moves it. Reap the guard. */
static int l_supervise(lua_State *L)
{
    char **argv, **env;
    check_command(L, &argv, &env);
    int64_t deadline = deadline_arg(L, 3);
    char err[256];
    lk_guarded g;
    if (lk_guard_spawn(argv, env, deadline, &g, err, sizeof err) < 0) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    lua_pushinteger(L, g.guard);
    lua_pushinteger(L, g.group);
    lua_pushinteger(L, g.watchdog);
    return 3;
}

/* process.extend(watchdog, seconds) -> true | nil: the deadline is now +
 * seconds (nil when the guard is gone) */
static int l_extend(lua_State *L)
{
    int fd = (int)luaL_checkinteger(L, 1);
    if (lk_guard_extend(fd, deadline_arg(L, 2)) < 0) lua_pushnil(L);
    else lua_pushboolean(L, 1);
    return 1;
}

/* process.close(fd): a watchdog or signal fd no longer needed */
static int l_close(lua_State *L)
{
    close((int)luaL_checkinteger(L, 1));
    return 0;
}

/* process.reap(pid) -> nil while it runs | exit status | nil, msg */
static int l_reap(lua_State *L)
{
    int status = 0;
    int rc = lk_proc_reap((pid_t)luaL_checkinteger(L, 1), &status);
    if (rc == 0) {
        lua_pushnil(L);
        return 1;
    }
    if (rc < 0) {
        lua_pushnil(L);
        lua_pushstring(L, strerror(errno));
        return 2;
    }
    lua_pushinteger(L, status);
    return 1;
}

/* process.kill(pid, signal name or number) -> true | nil, msg */
static int l_kill(lua_State *L)
{
    pid_t pid = (pid_t)luaL_checkinteger(L, 1);
    int sig = lua_type(L, 2) == LUA_TNUMBER ? (int)lua_tointeger(L, 2)
            : lk_signal_number(luaL_checkstring(L, 2));
    luaL_argcheck(L, sig > 0, 2, "unknown signal");
    if (kill(pid, sig)) {
        lua_pushnil(L);
        lua_pushstring(L, strerror(errno));
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* process.signals({names}) -> fd readable when one arrives (they are blocked) */
static int l_signals(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    int sigs[32], n = (int)lua_rawlen(L, 1);
    luaL_argcheck(L, n > 0 && n <= 32, 1, "1 to 32 signals");
    for (int i = 0; i < n; i++) {
        lua_rawgeti(L, 1, i + 1);
        sigs[i] = lk_signal_number(luaL_checkstring(L, -1));
        luaL_argcheck(L, sigs[i] > 0, 1, "unknown signal");
        lua_pop(L, 1);
    }
    int fd = lk_signal_fd(sigs, n);
    if (fd < 0) return luaL_error(L, "locker: signalfd: %s", strerror(errno));
    lua_pushinteger(L, fd);
    return 1;
}

/* process.read_signal(fd) -> signal number | nil */
static int l_read_signal(lua_State *L)
{
    int sig = lk_signal_read((int)luaL_checkinteger(L, 1));
    if (sig) lua_pushinteger(L, sig);
    else lua_pushnil(L);
    return 1;
}

/* process.heap_bytes() -> bytes in use in the C heap (glibc's mallinfo2):
 * what the process holds, C engine and Lua alike, free of RSS's reuse noise */
static int l_heap_bytes(lua_State *L)
{
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 33))
    struct mallinfo2 mi = mallinfo2();
    lua_pushnumber(L, (lua_Number)mi.uordblks + (lua_Number)mi.hblkhd);
#else
    lua_pushnil(L);
#endif
    return 1;
}

static int l_getpid(lua_State *L)
{
    lua_pushinteger(L, getpid());
    return 1;
}

/* isatty(fd) -> whether fd is a terminal (status --watch redraws in place) */
static int l_isatty(lua_State *L)
{
    lua_pushboolean(L, isatty((int)luaL_checkinteger(L, 1)) == 1);
    return 1;
}

static const luaL_Reg functions[] = {
    {"spawn", l_spawn},
    {"isatty", l_isatty},
    {"supervise", l_supervise},
    {"extend", l_extend},
    {"close", l_close},
    {"reap", l_reap},
    {"kill", l_kill},
    {"signals", l_signals},
    {"read_signal", l_read_signal},
    {"getpid", l_getpid},
    {"heap_bytes", l_heap_bytes},
    {NULL, NULL}
};

__attribute__((visibility("default"))) int luaopen_locker_process(lua_State *L);

int luaopen_locker_process(lua_State *L)
{
    luaL_newlib(L, functions);
    return 1;
}
