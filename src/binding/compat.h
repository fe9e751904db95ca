/* The few Lua 5.2+ API pieces the binding uses, for Lua 5.1 and LuaJIT. */
#ifndef LK_COMPAT_H
#define LK_COMPAT_H

#include <lua.h>
#include <lauxlib.h>

#if LUA_VERSION_NUM < 502
#define lua_rawlen(L, i) lua_objlen(L, i)
#ifndef luaL_newlib  /* LuaJIT 2.1 has these three; plain 5.1 has not */
#define luaL_newlib(L, l) (lua_newtable(L), luaL_register(L, NULL, l))
static void luaL_setfuncs(lua_State *L, const luaL_Reg *l, int nup)
{
    (void)nup;  /* no upvalues used here */
    for (; l->name; l++) {
        lua_pushcfunction(L, l->func);
        lua_setfield(L, -2, l->name);
    }
}
static void luaL_setmetatable(lua_State *L, const char *name)
{
    luaL_getmetatable(L, name);
    lua_setmetatable(L, -2);
}
#endif
#endif

#endif
