#include "base/map.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static size_t hash_bytes(const void *key, size_t len)
{
    const unsigned char *p = key;
    uint64_t h = 1469598103934665603ull;          /* FNV-1a */
    for (size_t i = 0; i < len; i++) h = (h ^ p[i]) * 1099511628211ull;
    return (size_t)h;
}

static lk_map_entry **find(const lk_map *m, const void *key, size_t len,
                           size_t h)
{
    lk_map_entry **pp = &m->slots[h & (m->n_slots - 1)];
    for (; *pp; pp = &(*pp)->next)
        if ((*pp)->hash == h && (*pp)->len == len &&
            memcmp((*pp)->key, key, len) == 0)
            return pp;
    return pp;
}

void *lk_map_get(const lk_map *m, const void *key, size_t len)
{
    if (!m->n_slots) return NULL;
    lk_map_entry **pp = find(m, key, len, hash_bytes(key, len));
    return *pp ? (*pp)->value : NULL;
}

static int grow(lk_map *m)
{
    size_t n = m->n_slots ? m->n_slots * 2 : 16;
    lk_map_entry **slots = calloc(n, sizeof *slots);
    if (!slots) return -1;
    for (size_t i = 0; i < m->n_slots; i++) {
        lk_map_entry *e = m->slots[i];
        while (e) {
            lk_map_entry *next = e->next;
            e->next = slots[e->hash & (n - 1)];
            slots[e->hash & (n - 1)] = e;
            e = next;
        }
    }
    free(m->slots);
    m->slots = slots;
    m->n_slots = n;
    return 0;
}

int lk_map_put(lk_map *m, const void *key, size_t len, void *value)
{
    size_t h = hash_bytes(key, len);
    if (m->n_slots) {  /* an update needs no room */
        lk_map_entry **pp = find(m, key, len, h);
        if (*pp) {
            (*pp)->value = value;
            return 0;
        }
    }
    if ((m->count + 1) * 4 > m->n_slots * 3 && grow(m)) return -1;
    lk_map_entry **pp = find(m, key, len, h);
    lk_map_entry *e = malloc(sizeof *e + len);
    if (!e) return -1;
    e->next = NULL;
    e->hash = h;
    e->value = value;
    e->len = len;
    memcpy(e->key, key, len);
    *pp = e;
    m->count++;
    return 0;
}

void *lk_map_del(lk_map *m, const void *key, size_t len)
{
    if (!m->n_slots) return NULL;
    lk_map_entry **pp = find(m, key, len, hash_bytes(key, len));
    lk_map_entry *e = *pp;
    if (!e) return NULL;
    void *value = e->value;
    *pp = e->next;
    free(e);
    m->count--;
    return value;
}

void lk_map_free(lk_map *m)
{
    for (size_t i = 0; i < m->n_slots; i++) {
        lk_map_entry *e = m->slots[i];
        while (e) {
            lk_map_entry *next = e->next;
            free(e);
            e = next;
        }
    }
    free(m->slots);
    m->slots = NULL;
    m->n_slots = m->count = 0;
}
