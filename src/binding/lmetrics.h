/* client:metrics()'s table, from a copy of the engine's metrics. */
#ifndef LK_LMETRICS_H
#define LK_LMETRICS_H

#include <lua.h>

#include "base/metrics.h"

/* Pushes one table; n_endpoints: how many failover counts it shows. */
void lk_push_metrics(lua_State *L, const lk_metrics *m, int n_endpoints);

#endif
