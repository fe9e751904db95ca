/* A hash map from byte strings to pointers (chained, grows by doubling).
 * Engine-thread only. The map copies keys; values are borrowed. */
#ifndef LK_MAP_H
#define LK_MAP_H

#include <stddef.h>

typedef struct lk_map_entry {
    struct lk_map_entry *next;
    size_t hash;
    void *value;
    size_t len;
    char key[];
} lk_map_entry;

typedef struct lk_map {
    lk_map_entry **slots;
    size_t n_slots;
    size_t count;
} lk_map;

void *lk_map_get(const lk_map *m, const void *key, size_t len);
/* Inserts or replaces. 0, or -1 when out of memory. */
int lk_map_put(lk_map *m, const void *key, size_t len, void *value);
/* Removes the key if present; returns its value or NULL. */
void *lk_map_del(lk_map *m, const void *key, size_t len);
void lk_map_free(lk_map *m);

#endif
