/* Reads that hold no state: get (a name's owner) and list (every contender
 * key under the prefix, for status). Engine thread only. */
#ifndef LK_QUERY_H
#define LK_QUERY_H

#include "engine/io.h"

void lk_query_command(lk_io *io, lk_cmd *c);   /* GET, LIST */

#endif
