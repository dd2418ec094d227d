/* flowagg.store.table: the hour tables of one partition, in C.
 *
 * A partition sums its flows per (hour, src_app, dest_app, vpc_id). This module holds those sums
 * and does all the per-flow work, so that Python makes one call per batch, never one per flow:
 *
 *   HourTables.merge(flows, cutoff)   sum a batch of flow records into the tables
 *   HourTables.encode(hour)           the JSON answer of GET /flows?hour=H, as bytes
 *   HourTables.rows(hour)             an hour's rows as tuples (snapshots, tests)
 *   split(flows, n), hour_bounds(flows), first_outside(flows, lo, hi)   batch helpers
 *
 * Layout of one hour (struct Hour), after CPython's compact dict:
 *
 *   entries  [Entry]  dense, in order of first appearance: two counters, three name numbers
 *   slots    [Slot]   open addressing over entries (linear probing, at most 3/4 full); each slot
 *                     holds the entry's number + 1 (0: empty) and 32 bits of its hash, so a probe
 *                     touches an entry only when the hash bits match
 *   names    [Name]   each distinct name of the hour once; its UTF-8 bytes live in `arena`
 *   name_slots        open addressing over names, as slots over entries
 *   high     [2 x u64] per entry, the bits of each counter above 64; NULL until some counter of
 *                     the hour could pass 2**64
 *
 * Counters are exact: 64 bits in the entry plus a 64-bit carry word once needed, so 128 bits,
 * which no sequence of flows can exceed (each adds at most 2**64 - 1, so it takes 2**64 of them);
 * a merge that would exceed it is refused with OverflowError before anything changes.
 *
 * A merge never fails midway. It first reads every flow and reserves all the memory it can
 * need (phase 1, which may fail and then changes nothing), then adds (phase 2, which cannot
 * fail). Phase 1's hashing and probing and all of phase 2 work on this module's own memory and
 * on the UTF-8 buffers of strings it holds references to, so for large batches they run with the
 * GIL released; `encode` does the same. The owning partition's reader/writer lock serialises
 * writers against readers; `busy` below refuses (RuntimeError) any use that would break that.
 *
 * Names are hashed with a seeded 64-bit multiply-mix hash (after wyhash); the seed is random per
 * process, so a client cannot choose names that collide.
 */

#include "table.h"

#include <malloc.h>
#include <sys/random.h>

uint64_t hash_seed[4];
uint64_t hash_start;
uint32_t max_entries = MAX_ENTRIES;

/* -- HourTables ------------------------------------------------------------------------------- */

PyObject *TableFull;

PyObject *
step_error(int status, const char *what)
{
    switch (status) {
        case STEP_OVERFLOW:
            PyErr_Format(PyExc_OverflowError, "a counter would pass 2**128; nothing was %s", what);
            break;
        case STEP_FULL:
            PyErr_Format(TableFull,
                         "an hour would hold more than 2**31 keys or names; nothing was %s", what);
            break;
        default:
            PyErr_NoMemory();
            break;
    }
    return NULL;
}

Hour *
tables_find(const HourTables *self, uint64_t hour)
{
    if (self->hour_slots == NULL) {
        return NULL;
    }
    uint32_t hash = short_hash(hash_hour(hour));
    for (uint32_t i = hash & self->hour_mask;; i = (i + 1) & self->hour_mask) {
        const Slot *s = &self->hour_slots[i];
        if (s->index == SLOT_NONE) {
            return NULL;
        }
        if (s->hash == hash && self->hours[s->index - 1]->hour == hour) {
            return self->hours[s->index - 1];
        }
    }
}

/* Bytes of the hours array and the hour slots. */
static size_t
tables_own_nbytes(uint64_t hours_cap, uint64_t slots)
{
    return (size_t)(hours_cap * sizeof(Hour *) + slots * sizeof(Slot));
}

static uint64_t
tables_slots(const HourTables *self)
{
    return self->hour_slots != NULL ? (uint64_t)self->hour_mask + 1 : 0;
}

/* The capacities of the hours array and the hour slots for `want` hours. */
static void
tables_plan(const HourTables *self, uint64_t want, uint64_t *cap, uint64_t *slots)
{
    *cap = want > self->hours_cap ? grown(self->hours_cap, want) : self->hours_cap;
    uint64_t have = tables_slots(self);
    *slots = have != 0 && want <= have * 3 / 4 ? have : slots_for(want);
}

/* Rebuild the hour slots with `size` slots. -1 without memory (nothing changed). */
static int
tables_reindex(HourTables *self, uint64_t size)
{
    Slot *slots = PyMem_RawCalloc(size, sizeof(Slot));
    if (slots == NULL) {
        return -1;
    }
    for (uint32_t i = 0; i < self->nhours; i++) {
        slot_put(slots, (uint32_t)(size - 1), i, short_hash(hash_hour(self->hours[i]->hour)));
    }
    PyMem_RawFree(self->hour_slots);
    self->hour_slots = slots;
    self->hour_mask = (uint32_t)(size - 1);
    return 0;
}

/* Room for `more` hours: a STEP_ status (nothing changed but capacities, which nbytes
 * follows). */
static int
tables_reserve(HourTables *self, uint32_t more)
{
    uint64_t want = (uint64_t)self->nhours + more, cap, slots;
    if (want > max_entries) {
        return STEP_FULL;
    }
    tables_plan(self, want, &cap, &slots);
    int status = STEP_OK;
    size_t before = tables_own_nbytes(self->hours_cap, tables_slots(self));
    if (cap > self->hours_cap) {
        Hour **hours = PyMem_RawRealloc(self->hours, cap * sizeof(Hour *));
        if (hours == NULL) {
            return STEP_NO_MEMORY;
        }
        self->hours = hours;
        self->hours_cap = (uint32_t)cap;
    }
    if (slots != tables_slots(self) && tables_reindex(self, slots) < 0) {
        status = STEP_NO_MEMORY;
    }
    self->nbytes += tables_own_nbytes(self->hours_cap, tables_slots(self)) - before;
    return status;
}

/* Add a new hour; needs the room tables_reserve made. */
static void
tables_add(HourTables *self, Hour *h)
{
    uint32_t index = self->nhours++;
    self->hours[index] = h;
    slot_put(self->hour_slots, self->hour_mask, index, short_hash(hash_hour(h->hour)));
    self->nbytes += hour_nbytes(h);
}

int
check_idle(HourTables *self, int writing)
{
    if (self->busy < 0 || (writing && self->busy > 0)) {
        PyErr_SetString(PyExc_RuntimeError,
                        "HourTables is in use by another thread; its owner's lock must be held");
        return -1;
    }
    return 0;
}

static PyObject *
HourTables_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, ":HourTables", kwlist)) {
        return NULL;
    }
    HourTables *self = (HourTables *)type->tp_alloc(type, 0);
    return (PyObject *)self; /* every field starts zeroed: no hours */
}

static void
HourTables_dealloc(HourTables *self)
{
    for (uint32_t i = 0; i < self->nhours; i++) {
        hour_free(self->hours[i]);
    }
    PyMem_RawFree(self->hours);
    PyMem_RawFree(self->hour_slots);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* One hour of a batch being merged. */
typedef struct {
    uint64_t hour;
    Hour *table;     /* the hour's table (NULL until phase 1 creates a missing one) */
    int created;     /* the table is new in this merge: added to the tables in phase 2 */
    uint64_t candidates; /* items whose key the table did not hold before (copies counted) */
    uint64_t keys;   /* distinct keys of the batch the table does not hold: entries to add */
    uint64_t names;  /* distinct names of those keys the table does not hold: names to add */
    uint64_t bytes;  /* and their bytes: arena bytes to add */
    u128 sum[2];     /* the batch's total bytes_tx and bytes_rx for the hour */
    int overflow;    /* the sums overflowed 128 bits */
} Group;

typedef struct {
    Item *items;
    Py_ssize_t n;    /* items read (and holding references, unless read from packs) */
    PyObject *owners; /* a tuple of the Packs the items point into, or NULL */
    Py_ssize_t total;  /* items to merge: b->n once read, or the packs' flows until filled */
    uint64_t cutoff;   /* items of hours below it are skipped */
    Group *groups;
    uint32_t ngroups;
    uint64_t applied;   /* flows not skipped */
    uint64_t new_keys;  /* set by phase 2 */
} Batch;

static int batch_fill_packs(Batch *b);

static void
batch_free(Batch *b)
{
    if (b->owners == NULL) {
        items_release(b->items, b->n);
    }
    Py_XDECREF(b->owners);
    PyMem_RawFree(b->items);
    if (b->groups != NULL) {
        for (uint32_t g = 0; g < b->ngroups; g++) {
            if (b->groups[g].created) {
                hour_free(b->groups[g].table); /* only still owned here if phase 2 never ran */
            }
        }
    }
    PyMem_RawFree(b->groups);
}

/* Batches touch few hours: up to this many are found by a linear search, more through a map. */
#define FEW_GROUPS 8

/* The group of `hour`, added if new; -1 without memory. `slots` is NULL while there are at
 * most FEW_GROUPS groups, then a map over them, rebuilt as it fills. */
static int64_t
group_of(Batch *b, uint64_t hour, Slot **slots, uint32_t *mask, uint32_t *cap)
{
    if (*slots == NULL) {
        for (uint32_t g = 0; g < b->ngroups; g++) {
            if (b->groups[g].hour == hour) {
                return g;
            }
        }
    }
    else {
        uint32_t hash = short_hash(hash_hour(hour));
        for (uint32_t s = hash & *mask; (*slots)[s].index != SLOT_NONE; s = (s + 1) & *mask) {
            if ((*slots)[s].hash == hash && b->groups[(*slots)[s].index - 1].hour == hour) {
                return (*slots)[s].index - 1;
            }
        }
    }
    if (b->ngroups == *cap) {
        uint64_t more = grown(*cap, (uint64_t)*cap + 1);
        Group *groups = PyMem_RawRealloc(b->groups, more * sizeof(Group));
        if (groups == NULL) {
            return -1;
        }
        b->groups = groups;
        *cap = (uint32_t)more;
    }
    uint32_t g = b->ngroups++;
    b->groups[g] = (Group){.hour = hour};
    if (b->ngroups > FEW_GROUPS
        && (*slots == NULL || (uint64_t)b->ngroups > ((uint64_t)*mask + 1) * 3 / 4)) {
        uint64_t size = slots_for((uint64_t)b->ngroups * 2);
        Slot *map = PyMem_RawCalloc(size, sizeof(Slot));
        if (map == NULL) {
            return -1;
        }
        for (uint32_t i = 0; i < b->ngroups; i++) {
            slot_put(map, (uint32_t)(size - 1), i, short_hash(hash_hour(b->groups[i].hour)));
        }
        PyMem_RawFree(*slots);
        *slots = map;
        *mask = (uint32_t)(size - 1);
    }
    else if (*slots != NULL) {
        slot_put(*slots, *mask, g, short_hash(hash_hour(hour)));
    }
    return g;
}

/* Give every item not skipped its group, one per distinct hour. A STEP_ status (no exception
 * set: it may run without the GIL). */
static int
batch_group(Batch *b)
{
    if ((uint64_t)b->n * 3 >= UINT32_MAX) {
        return STEP_FULL; /* items and their names are numbered with 32 bits below */
    }
    Slot *slots = NULL;
    uint32_t mask = 0, cap = 0;
    uint32_t last = SKIPPED;
    for (Py_ssize_t i = 0; i < b->n; i++) {
        Item *item = &b->items[i];
        if (item->group == SKIPPED) {
            continue;
        }
        if (last == SKIPPED || b->groups[last].hour != item->hour) {
            int64_t g = group_of(b, item->hour, &slots, &mask, &cap);
            if (g < 0) {
                PyMem_RawFree(slots);
                return STEP_NO_MEMORY;
            }
            last = (uint32_t)g;
        }
        item->group = last;
    }
    PyMem_RawFree(slots);
    return STEP_OK;
}

#define PREFETCH_AHEAD 8

/* Hash every key and look it up in its hour's table (item->row), and total the counters per
 * hour. Changes nothing. */
static void
batch_lookup(HourTables *self, Batch *b)
{
    for (uint32_t g = 0; g < b->ngroups; g++) {
        b->groups[g].table = tables_find(self, b->groups[g].hour);
    }
    for (Py_ssize_t i = 0; i < b->n; i++) {
        Item *item = &b->items[i];
        if (item->group != SKIPPED) {
            item->hash = short_hash(hash_key(&item->key));
        }
    }
    /* Probing a table larger than the cache misses twice per flow (slot, entry): ask for the
     * slot PREFETCH_AHEAD flows ahead and, half as far ahead, for the entry it names, so that
     * the misses of several flows overlap instead of following one another. */
    for (Py_ssize_t i = 0; i < b->n; i++) {
        if (i + PREFETCH_AHEAD < b->n) {
            const Item *ahead = &b->items[i + PREFETCH_AHEAD];
            if (ahead->group != SKIPPED && b->groups[ahead->group].table != NULL) {
                hour_prefetch_slot(b->groups[ahead->group].table, ahead->hash);
            }
        }
        if (i + PREFETCH_AHEAD / 2 < b->n) {
            const Item *ahead = &b->items[i + PREFETCH_AHEAD / 2];
            if (ahead->group != SKIPPED && b->groups[ahead->group].table != NULL) {
                hour_prefetch_entry(b->groups[ahead->group].table, ahead->hash);
            }
        }
        Item *item = &b->items[i];
        if (item->group == SKIPPED) {
            continue;
        }
        Group *g = &b->groups[item->group];
        item->row = g->table != NULL ? hour_find(g->table, &item->key, item->hash) : 0;
        g->candidates += item->row == 0;
        for (int c = 0; c < 2; c++) {
            g->overflow |= __builtin_add_overflow(g->sum[c], item->count[c], &g->sum[c]);
        }
    }
}

static inline int
same_key(const KeyRef *a, const KeyRef *b)
{
    for (int f = 0; f < 3; f++) {
        if (a->length[f] != b->length[f] || !same_bytes(a->name[f], b->name[f], a->length[f])) {
            return 0;
        }
    }
    return 1;
}

/* Spread a short hash over groups, so that the same key in two hours lands apart. */
static inline uint32_t
in_group(uint32_t hash, uint32_t group)
{
    return hash ^ (group * 0x9e3779b9u);
}

/* After batch_lookup: count exactly what merging the batch adds to each hour (distinct new
 * keys, their distinct new names and those names' bytes), however many copies of a key or a
 * name the batch holds; the first item of each new key gets its names' hashes. A STEP_
 * status; changes nothing of the tables. */
static int
batch_census(Batch *b)
{
    uint64_t candidates = 0;
    for (uint32_t g = 0; g < b->ngroups; g++) {
        candidates += b->groups[g].candidates;
    }
    if (candidates == 0) {
        return STEP_OK;
    }
    uint64_t key_size = slots_for(candidates), name_size = slots_for(candidates * 3);
    Slot *keys = PyMem_RawCalloc(key_size, sizeof(Slot)); /* new keys met: item + 1 */
    Slot *names = PyMem_RawCalloc(name_size, sizeof(Slot)); /* new names: 3 * item + f + 1 */
    if (keys == NULL || names == NULL) {
        PyMem_RawFree(keys);
        PyMem_RawFree(names);
        return STEP_NO_MEMORY;
    }
    uint32_t key_mask = (uint32_t)(key_size - 1), name_mask = (uint32_t)(name_size - 1);
    for (Py_ssize_t i = 0; i < b->n; i++) {
        Item *item = &b->items[i];
        if (item->group == SKIPPED || item->row != 0) {
            continue;
        }
        Group *g = &b->groups[item->group];
        uint32_t hash = in_group(item->hash, item->group), s = hash & key_mask;
        for (; keys[s].index != SLOT_NONE; s = (s + 1) & key_mask) {
            const Item *other = &b->items[keys[s].index - 1];
            if (keys[s].hash == hash && other->group == item->group
                && same_key(&other->key, &item->key)) {
                break;
            }
        }
        if (keys[s].index != SLOT_NONE) {
            continue; /* a copy of a key met earlier in the batch */
        }
        keys[s].index = (uint32_t)i + 1;
        keys[s].hash = hash;
        g->keys++;
        for (int f = 0; f < 3; f++) {
            const char *bytes = item->key.name[f];
            uint32_t length = item->key.length[f];
            item->name_hash[f] = short_hash(hash_bytes(bytes, length));
            if (g->table != NULL && hour_find_name(g->table, bytes, length, item->name_hash[f]) >= 0) {
                continue;
            }
            uint32_t nh = in_group(item->name_hash[f], item->group), t = nh & name_mask;
            for (; names[t].index != SLOT_NONE; t = (t + 1) & name_mask) {
                uint32_t at = names[t].index - 1;
                const Item *other = &b->items[at / 3];
                if (names[t].hash == nh && other->group == item->group
                    && other->key.length[at % 3] == length
                    && same_bytes(other->key.name[at % 3], bytes, length)) {
                    break;
                }
            }
            if (names[t].index == SLOT_NONE) {
                names[t].index = (uint32_t)(i * 3 + f) + 1;
                names[t].hash = nh;
                g->names++;
                g->bytes += length;
            }
        }
    }
    PyMem_RawFree(keys);
    PyMem_RawFree(names);
    return STEP_OK;
}

/* The capacities group `g` needs: a STEP_ status. */
static int
group_plan(const Group *g, Caps *caps)
{
    Hour empty = {.hour = g->hour};
    const Hour *h = g->table != NULL ? g->table : &empty;
    u128 sum = g->sum[0] > g->sum[1] ? g->sum[0] : g->sum[1];
    u128 top;
    if (g->overflow || __builtin_add_overflow(h->max_count, sum, &top)) {
        return STEP_OVERFLOW;
    }
    return hour_plan(h, g->keys, g->names, g->bytes, (top >> 64) != 0, caps);
}

/* Phase 1 without Python: look up every key, count what is new, and reserve exactly the
 * memory phase 2 needs. A STEP_ status; on failure nothing the tables hold has changed (only
 * capacities, which self->nbytes follows). */
static int
batch_prepare(HourTables *self, Batch *b)
{
    batch_lookup(self, b);
    int status = batch_census(b);
    if (status != STEP_OK) {
        return status;
    }
    uint32_t created = 0;
    for (uint32_t g = 0; g < b->ngroups; g++) {
        Group *group = &b->groups[g];
        Caps caps;
        if ((status = group_plan(group, &caps)) != STEP_OK) {
            return status;
        }
        if (group->table == NULL) {
            group->table = hour_new(group->hour);
            if (group->table == NULL) {
                return STEP_NO_MEMORY;
            }
            group->created = 1;
            created++;
        }
        Hour *h = group->table;
        size_t before = group->created ? 0 : hour_nbytes(h);
        status = hour_reserve(h, &caps) < 0 ? STEP_NO_MEMORY : STEP_OK;
        if (!group->created) {
            self->nbytes += hour_nbytes(h) - before; /* counted once added, if created */
        }
        if (status != STEP_OK) {
            return status;
        }
    }
    return created > 0 ? tables_reserve(self, created) : STEP_OK;
}

/* Phase 2: add every item. Cannot fail. */
static void
batch_apply(HourTables *self, Batch *b)
{
    for (uint32_t g = 0; g < b->ngroups; g++) {
        if (b->groups[g].created) {
            tables_add(self, b->groups[g].table);
            b->groups[g].created = 0; /* owned by the tables now */
        }
    }
    uint64_t new_keys = 0;
    for (Py_ssize_t i = 0; i < b->n; i++) {
        Item *item = &b->items[i];
        if (item->group == SKIPPED) {
            continue;
        }
        Hour *h = b->groups[item->group].table;
        uint32_t row;
        if (item->row != 0) {
            row = item->row - 1;
        }
        else {
            /* An earlier item of this batch may have added the key since phase 1. */
            uint32_t found = hour_find(h, &item->key, item->hash);
            if (found != 0) {
                row = found - 1;
            }
            else {
                row = hour_insert(h, &item->key, item->hash, item->name_hash);
                new_keys++;
            }
        }
        hour_add(h, row, 0, item->count[0]);
        hour_add(h, row, 1, item->count[1]);
    }
    self->keys += new_keys;
    b->new_keys = new_keys;
}

/* Fill (from packs), group, prepare and apply: the whole merge but reading records. A STEP_
 * status; no exception set, so it may run without the GIL. */
static int
batch_merge_steps(HourTables *self, Batch *b)
{
    int status = batch_fill_packs(b);
    if (status == STEP_OK) {
        status = batch_group(b);
    }
    if (status == STEP_OK) {
        status = batch_prepare(self, b);
    }
    if (status == STEP_OK) {
        batch_apply(self, b);
    }
    return status;
}

/* Merge a batch read by batch_read, without the GIL for large batches. The caller has read the
 * batch (which may run Python code) before: only now are the tables checked and marked. */
static int
batch_merge(HourTables *self, Batch *b)
{
    if (check_idle(self, 1) < 0) {
        return -1;
    }
    int status;
    self->busy = -1; /* no reader or writer from here, with or without the GIL */
    if (b->total >= RELEASE_GIL_AT) {
        Py_BEGIN_ALLOW_THREADS
        status = batch_merge_steps(self, b);
        Py_END_ALLOW_THREADS
    }
    else {
        status = batch_merge_steps(self, b);
    }
    self->busy = 0;
    if (status != STEP_OK) {
        step_error(status, "merged");
        return -1;
    }
    return 0;
}

/* Take a tuple of Packs as the batch: b->owners keeps them alive and batch_fill_packs points
 * the items at their flows later, without the GIL. No reference per item, nothing to release
 * per item. */
static int
batch_read_packs(Batch *b, PyObject *packs, uint64_t cutoff)
{
    b->owners = Py_NewRef(packs);
    b->cutoff = cutoff;
    Py_ssize_t npacks = PyTuple_GET_SIZE(packs);
    for (Py_ssize_t p = 0; p < npacks; p++) {
        PyObject *pack = PyTuple_GET_ITEM(packs, p);
        if (!Pack_Check(pack)) {
            PyErr_Format(PyExc_TypeError,
                         "a batch is all flow records or all Packs, not a %.100s among Packs",
                         Py_TYPE(pack)->tp_name);
            return -1;
        }
        b->total += ((Pack *)pack)->n;
    }
    b->items = PyMem_RawMalloc((b->total > 0 ? b->total : 1) * sizeof(Item));
    if (b->items == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

/* Point the items at the packs' flows (a batch of packs not yet filled; else nothing to do).
 * Cannot fail: returns STEP_OK, to chain with the other steps. */
static int
batch_fill_packs(Batch *b)
{
    if (b->owners == NULL || b->n == b->total) {
        return STEP_OK;
    }
    Py_ssize_t npacks = PyTuple_GET_SIZE(b->owners);
    for (Py_ssize_t p = 0; p < npacks; p++) {
        const Pack *pack = (const Pack *)PyTuple_GET_ITEM(b->owners, p);
        for (Py_ssize_t i = 0; i < pack->n; i++) {
            const PackItem *in = &pack->items[i];
            Item *item = &b->items[b->n++];
            item_init(item);
            for (int f = 0; f < 3; f++) {
                item->key.name[f] = pack->arena + in->offset[f];
                item->key.length[f] = in->length[f];
            }
            item->count[0] = in->count[0];
            item->count[1] = in->count[1];
            item->hour = in->hour;
            if (item->hour < b->cutoff) {
                item->group = SKIPPED;
            }
            else {
                b->applied++;
            }
        }
    }
    return STEP_OK;
}

/* Read every record of `records` (flow records, or with `rows_of_hour` set, snapshot rows of
 * that hour; or a list of Packs) into b->items; items of hours below `cutoff` are marked
 * SKIPPED. 0, or -1 with an exception set (the items read so far hold references: batch_free
 * releases them). Reading may run Python code (getattr, a generator): the records are copied
 * into a tuple first, so that code cannot change what is being read. */
static int
batch_read(Batch *b, PyObject *records, uint64_t cutoff, const uint64_t *rows_of_hour)
{
    PyObject *seq = PySequence_Tuple(records);
    if (seq == NULL) {
        if (PyErr_ExceptionMatches(PyExc_TypeError)) {
            PyErr_SetString(PyExc_TypeError, "flows must be a sequence");
        }
        return -1;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(seq);
    if (rows_of_hour == NULL && n > 0 && Pack_Check(PyTuple_GET_ITEM(seq, 0))) {
        int status = batch_read_packs(b, seq, cutoff);
        Py_DECREF(seq);
        return status;
    }
    int status = 0;
    b->items = PyMem_RawMalloc((n > 0 ? n : 1) * sizeof(Item));
    if (b->items == NULL) {
        PyErr_NoMemory();
        status = -1;
    }
    Layout layout = {0};
    for (Py_ssize_t i = 0; status == 0 && i < n; i++) {
        Item *item = &b->items[i];
        item_init(item);
        b->n = i + 1; /* the item may hold references even if reading it fails */
        if (rows_of_hour != NULL) {
            status = read_row(PyTuple_GET_ITEM(seq, i), *rows_of_hour, item);
        }
        else {
            status = read_flow(PyTuple_GET_ITEM(seq, i), &layout, item);
        }
        if (status == 0 && item->hour < cutoff) {
            item->group = SKIPPED;
        }
        else if (status == 0) {
            b->applied++;
        }
    }
    Py_DECREF(seq); /* the items keep their own references to what they point into */
    b->total = b->n;
    return status;
}

PyDoc_STRVAR(merge_doc,
"merge(flows, cutoff=0) -> (applied, new_keys)\n\n"
"Add a list of flow records (objects with src_app, dest_app, vpc_id, bytes_tx, bytes_rx and\n"
"hour), or of Packs, to the tables; records of hours below cutoff are skipped. All or nothing:\n"
"on any error (a field of the wrong type, MemoryError, OverflowError past 2**128, TableFull)\n"
"the tables are unchanged. Returns how many records were added and how many keys (key-hours)\n"
"were new.");

static PyObject *
HourTables_merge(HourTables *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"flows", "cutoff", NULL};
    PyObject *flows, *cutoff_arg = NULL;
    uint64_t cutoff = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|O:merge", kwlist, &flows, &cutoff_arg)) {
        return NULL;
    }
    if (cutoff_arg != NULL && as_u64(cutoff_arg, "cutoff", &cutoff) < 0) {
        return NULL;
    }
    Batch b = {0};
    PyObject *result = NULL;
    if (batch_read(&b, flows, cutoff, NULL) == 0 && batch_merge(self, &b) == 0) {
        result = Py_BuildValue("KK", (unsigned long long)b.applied, (unsigned long long)b.new_keys);
    }
    batch_free(&b);
    return result;
}

/* Exactly what merging the batch would add: key-hours, and bytes the tables would allocate.
 * A STEP_ status; changes nothing. */
static int
batch_cost(HourTables *self, Batch *b, uint64_t *keys, uint64_t *bytes)
{
    int status = batch_fill_packs(b);
    if (status == STEP_OK) {
        status = batch_group(b);
    }
    if (status != STEP_OK) {
        return status;
    }
    batch_lookup(self, b);
    if ((status = batch_census(b)) != STEP_OK) {
        return status;
    }
    uint64_t created = 0;
    *keys = *bytes = 0;
    for (uint32_t g = 0; g < b->ngroups; g++) {
        Group *group = &b->groups[g];
        Caps caps;
        if ((status = group_plan(group, &caps)) != STEP_OK) {
            return status;
        }
        *keys += group->keys;
        *bytes += caps_nbytes(&caps);
        if (group->table != NULL) {
            *bytes -= hour_nbytes(group->table);
        }
        else {
            created++;
        }
    }
    if (created > 0) {
        uint64_t want = (uint64_t)self->nhours + created, cap, slots;
        if (want > max_entries) {
            return STEP_FULL;
        }
        tables_plan(self, want, &cap, &slots);
        *bytes += tables_own_nbytes(cap, slots)
                  - tables_own_nbytes(self->hours_cap, tables_slots(self));
    }
    return STEP_OK;
}

PyDoc_STRVAR(cost_doc,
"cost(flows) -> (new_keys, new_bytes)\n\n"
"What merging a list of flow records (or of Packs) into the tables as they are would add:\n"
"the distinct (hour, key) pairs they do not hold yet, and the bytes the tables would\n"
"allocate for them (entries, slots, names, hours), exactly. Changes nothing.");

static PyObject *
HourTables_cost(HourTables *self, PyObject *flows)
{
    Batch b = {0};
    PyObject *result = NULL;
    if (batch_read(&b, flows, 0, NULL) == 0 && check_idle(self, 0) == 0) {
        uint64_t keys, bytes;
        self->busy++; /* nothing below runs Python code; marked all the same */
        int status = batch_cost(self, &b, &keys, &bytes);
        self->busy--;
        result = status != STEP_OK ? step_error(status, "counted")
                                   : Py_BuildValue("KK", (unsigned long long)keys,
                                                   (unsigned long long)bytes);
    }
    batch_free(&b);
    return result;
}

PyDoc_STRVAR(count_new_doc,
"count_new(flows) -> int\n\n"
"How many distinct (hour, key) pairs of a list of flow records the tables do not hold yet:\n"
"the key-hours merging them would add. Changes nothing.");

static PyObject *
HourTables_count_new(HourTables *self, PyObject *flows)
{
    PyObject *cost = HourTables_cost(self, flows);
    if (cost == NULL) {
        return NULL;
    }
    PyObject *keys = Py_NewRef(PyTuple_GET_ITEM(cost, 0));
    Py_DECREF(cost);
    return keys;
}

PyDoc_STRVAR(merge_rows_doc,
"merge_rows(hour, rows) -> new_keys\n\n"
"Add summed rows (src_app, dest_app, vpc_id, bytes_tx, bytes_rx) to an hour, as a snapshot\n"
"holds them; counters may be of any size below 2**128. All or nothing, as merge.");

static PyObject *
HourTables_merge_rows(HourTables *self, PyObject *args)
{
    PyObject *hour_arg, *rows;
    uint64_t hour;
    if (!PyArg_ParseTuple(args, "OO:merge_rows", &hour_arg, &rows)) {
        return NULL;
    }
    if (as_u64(hour_arg, "hour", &hour) < 0) {
        return NULL;
    }
    Batch b = {0};
    PyObject *result = NULL;
    if (batch_read(&b, rows, 0, &hour) == 0 && batch_merge(self, &b) == 0) {
        result = PyLong_FromUnsignedLongLong(b.new_keys);
    }
    batch_free(&b);
    return result;
}

/* -- reading ---------------------------------------------------------------------------------- */

static int
parse_hour(PyObject *arg, uint64_t *hour, int *exists)
{
    /* An hour that no table can hold (negative, or 2**64 and above) simply has no rows. */
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(arg, &overflow);
    if (v == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (overflow < 0 || (overflow == 0 && v < 0)) {
        *exists = 0;
        return 0;
    }
    if (overflow > 0) {
        unsigned long long u = PyLong_AsUnsignedLongLong(arg);
        if (u == (unsigned long long)-1 && PyErr_Occurred()) {
            if (!PyErr_ExceptionMatches(PyExc_OverflowError)) {
                return -1;
            }
            PyErr_Clear();
            *exists = 0;
            return 0;
        }
        v = (long long)u;
    }
    *hour = (uint64_t)v;
    *exists = 1;
    return 0;
}

static const Hour *
lookup_hour(HourTables *self, PyObject *arg, int *error)
{
    *error = 0;
    if (!PyLong_Check(arg)) {
        PyErr_Format(PyExc_TypeError, "hour must be an int, not %.100s", Py_TYPE(arg)->tp_name);
        *error = 1;
        return NULL;
    }
    uint64_t hour;
    int exists;
    if (parse_hour(arg, &hour, &exists) < 0) {
        *error = 1;
        return NULL;
    }
    if (check_idle(self, 0) < 0) { /* the slots may be changing under a merge */
        *error = 1;
        return NULL;
    }
    return exists ? tables_find(self, hour) : NULL;
}

/* A new str for each name of an hour, made on first use (rows) and released together. */
typedef struct {
    const Hour *hour;
    PyObject **str; /* hour->nnames strong references or NULLs */
} NameCache;

static PyObject *
cached_name(NameCache *cache, uint32_t name)
{
    PyObject *s = cache->str[name];
    if (s == NULL) {
        s = PyUnicode_DecodeUTF8(name_bytes(cache->hour, name), name_length(cache->hour, name),
                                 "strict");
        cache->str[name] = s;
    }
    return Py_XNewRef(s);
}

PyDoc_STRVAR(rows_doc,
"rows(hour) -> list of (src_app, dest_app, vpc_id, bytes_tx, bytes_rx)\n\n"
"A copy of the hour's rows, in order of first appearance; [] for an hour without data.");

static PyObject *rows_of(const Hour *h);

static PyObject *
HourTables_rows(HourTables *self, PyObject *arg)
{
    int error;
    const Hour *h = lookup_hour(self, arg, &error);
    if (error || check_idle(self, 0) < 0) {
        return NULL;
    }
    if (h == NULL) {
        return PyList_New(0);
    }
    /* Making the tuples may run Python code (a garbage collection, and any finaliser it
     * calls): marked as a reader meanwhile, so that code cannot merge into this hour. */
    self->busy++;
    PyObject *rows = rows_of(h);
    self->busy--;
    return rows;
}

static PyObject *
rows_of(const Hour *h)
{
    NameCache cache = {.hour = h, .str = PyMem_Calloc(h->nnames > 0 ? h->nnames : 1,
                                                      sizeof(PyObject *))};
    if (cache.str == NULL) {
        return PyErr_NoMemory();
    }
    PyObject *rows = PyList_New(h->len);
    if (rows == NULL) {
        goto error;
    }
    for (uint32_t r = 0; r < h->len; r++) {
        const Entry *e = &h->entries[r];
        PyObject *row = PyTuple_New(5);
        if (row == NULL) {
            goto error;
        }
        PyList_SET_ITEM(rows, r, row); /* the list owns it; filled in below */
        for (int f = 0; f < 3; f++) {
            PyObject *name = cached_name(&cache, e->name[f]);
            if (name == NULL) {
                goto error;
            }
            PyTuple_SET_ITEM(row, f, name);
        }
        for (int c = 0; c < 2; c++) {
            PyObject *count = long_from_u128(entry_count(h, r, c));
            if (count == NULL) {
                goto error;
            }
            PyTuple_SET_ITEM(row, 3 + c, count);
        }
    }
    for (uint32_t i = 0; i < h->nnames; i++) {
        Py_XDECREF(cache.str[i]);
    }
    PyMem_Free(cache.str);
    return rows;
error:
    for (uint32_t i = 0; i < h->nnames; i++) {
        Py_XDECREF(cache.str[i]);
    }
    PyMem_Free(cache.str);
    Py_XDECREF(rows);
    return NULL;
}

PyDoc_STRVAR(encode_doc,
"encode(hour) -> bytes\n\n"
"The hour's rows as the JSON array GET /flows answers: one object per key with src_app,\n"
"dest_app, vpc_id, bytes_tx, bytes_rx and hour, in order of first appearance; b'[]' without\n"
"data. The same bytes msgspec gives for the rows as Flow records.");

static PyObject *
HourTables_encode(HourTables *self, PyObject *arg)
{
    int error;
    const Hour *h = lookup_hour(self, arg, &error);
    if (error || check_idle(self, 0) < 0) {
        return NULL;
    }
    if (h == NULL || h->len == 0) {
        return PyBytes_FromStringAndSize("[]", 2);
    }
    int release = h->len >= RELEASE_GIL_AT;
    size_t length;
    self->busy++; /* readers only from here: merge and drop_before refuse */
    if (release) {
        Py_BEGIN_ALLOW_THREADS
        length = hour_json_length(h);
        Py_END_ALLOW_THREADS
    }
    else {
        length = hour_json_length(h);
    }
    PyObject *out = length <= PY_SSIZE_T_MAX ? PyBytes_FromStringAndSize(NULL, length) : NULL;
    if (out == NULL) {
        self->busy--;
        return PyErr_Occurred() ? NULL : PyErr_NoMemory();
    }
    /* The bytes object is not shared yet: writing into it needs no GIL. */
    char *buffer = PyBytes_AS_STRING(out);
    char *end;
    if (release) {
        Py_BEGIN_ALLOW_THREADS
        end = hour_json_write(h, buffer);
        Py_END_ALLOW_THREADS
    }
    else {
        end = hour_json_write(h, buffer);
    }
    self->busy--;
    if ((size_t)(end - buffer) != length) {
        Py_DECREF(out);
        PyErr_SetString(PyExc_SystemError, "encode: the JSON length was miscounted");
        return NULL;
    }
    return out;
}

/* -- the hours -------------------------------------------------------------------------------- */

static int
compare_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

PyDoc_STRVAR(hours_doc, "hours() -> list of the hours held, ascending");

static PyObject *
HourTables_hours(HourTables *self, PyObject *Py_UNUSED(ignored))
{
    if (check_idle(self, 0) < 0) {
        return NULL;
    }
    uint64_t *hours = PyMem_Malloc(sizeof(uint64_t) * (self->nhours > 0 ? self->nhours : 1));
    if (hours == NULL) {
        return PyErr_NoMemory();
    }
    for (uint32_t i = 0; i < self->nhours; i++) {
        hours[i] = self->hours[i]->hour;
    }
    qsort(hours, self->nhours, sizeof(uint64_t), compare_u64);
    PyObject *list = PyList_New(self->nhours);
    for (uint32_t i = 0; list != NULL && i < self->nhours; i++) {
        PyObject *hour = PyLong_FromUnsignedLongLong(hours[i]);
        if (hour == NULL) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, i, hour);
    }
    PyMem_Free(hours);
    return list;
}

/* After hours were dropped: give back the hours array and hour slots they no longer need, so
 * that retention returns memory. Refills the slots in place where a smaller array cannot be
 * had: cannot fail. */
static void
tables_shrink(HourTables *self)
{
    size_t before = tables_own_nbytes(self->hours_cap, tables_slots(self));
    if (self->nhours == 0) {
        PyMem_RawFree(self->hours);
        PyMem_RawFree(self->hour_slots);
        self->hours = NULL;
        self->hour_slots = NULL;
        self->hours_cap = self->hour_mask = 0;
    }
    else {
        if (self->hours_cap > 2 * (uint64_t)self->nhours) {
            Hour **hours = PyMem_RawRealloc(self->hours, self->nhours * sizeof(Hour *));
            if (hours != NULL) {
                self->hours = hours;
                self->hours_cap = self->nhours;
            }
        }
        uint64_t size = slots_for(self->nhours);
        if (size >= tables_slots(self) || tables_reindex(self, size) < 0) {
            memset(self->hour_slots, 0, ((size_t)self->hour_mask + 1) * sizeof(Slot));
            for (uint32_t i = 0; i < self->nhours; i++) {
                slot_put(self->hour_slots, self->hour_mask, i,
                         short_hash(hash_hour(self->hours[i]->hour)));
            }
        }
    }
    self->nbytes -= before - tables_own_nbytes(self->hours_cap, tables_slots(self));
}

PyDoc_STRVAR(drop_before_doc,
"drop_before(cutoff) -> (hours, keys)\n\n"
"Drop every hour below cutoff; returns how many hours and key-hours were dropped.");

static PyObject *
HourTables_drop_before(HourTables *self, PyObject *arg)
{
    unsigned long long cutoff = PyLong_AsUnsignedLongLong(arg);
    if (cutoff == (unsigned long long)-1 && PyErr_Occurred()) {
        return NULL;
    }
    if (check_idle(self, 1) < 0) {
        return NULL;
    }
    uint32_t kept = 0, dropped = 0;
    uint64_t keys = 0;
    for (uint32_t i = 0; i < self->nhours; i++) {
        Hour *h = self->hours[i];
        if (h->hour < cutoff) {
            keys += h->len;
            self->nbytes -= hour_nbytes(h);
            hour_free(h);
            dropped++;
        }
        else {
            self->hours[kept++] = h;
        }
    }
    if (dropped > 0) {
        self->nhours = kept;
        self->keys -= keys;
        tables_shrink(self);
    }
    return Py_BuildValue("IK", dropped, (unsigned long long)keys);
}

PyDoc_STRVAR(key_count_doc, "key_count(hour) -> number of keys the hour holds");

static PyObject *
HourTables_key_count(HourTables *self, PyObject *arg)
{
    int error;
    const Hour *h = lookup_hour(self, arg, &error);
    if (error) {
        return NULL;
    }
    return PyLong_FromUnsignedLong(h != NULL ? h->len : 0);
}

static Py_ssize_t
HourTables_len(HourTables *self)
{
    return check_idle(self, 0) < 0 ? -1 : (Py_ssize_t)self->nhours;
}

static PyObject *
HourTables_get_keys(HourTables *self, void *Py_UNUSED(closure))
{
    if (check_idle(self, 0) < 0) {
        return NULL;
    }
    return PyLong_FromUnsignedLongLong(self->keys);
}

static PyObject *
HourTables_get_newest(HourTables *self, void *Py_UNUSED(closure))
{
    if (check_idle(self, 0) < 0) {
        return NULL;
    }
    if (self->nhours == 0) {
        return PyLong_FromLong(-1);
    }
    uint64_t newest = 0;
    for (uint32_t i = 0; i < self->nhours; i++) {
        if (self->hours[i]->hour > newest) {
            newest = self->hours[i]->hour;
        }
    }
    return PyLong_FromUnsignedLongLong(newest);
}

static PyObject *
HourTables_get_nbytes(HourTables *self, void *Py_UNUSED(closure))
{
    if (check_idle(self, 0) < 0) {
        return NULL;
    }
    return PyLong_FromUnsignedLongLong(self->nbytes);
}

static PyMethodDef HourTables_methods[] = {
    {"merge", (PyCFunction)(void (*)(void))HourTables_merge, METH_VARARGS | METH_KEYWORDS,
     merge_doc},
    {"merge_rows", (PyCFunction)HourTables_merge_rows, METH_VARARGS, merge_rows_doc},
    {"rows", (PyCFunction)HourTables_rows, METH_O, rows_doc},
    {"encode", (PyCFunction)HourTables_encode, METH_O, encode_doc},
    {"hours", (PyCFunction)HourTables_hours, METH_NOARGS, hours_doc},
    {"drop_before", (PyCFunction)HourTables_drop_before, METH_O, drop_before_doc},
    {"key_count", (PyCFunction)HourTables_key_count, METH_O, key_count_doc},
    {"scan", (PyCFunction)HourTables_scan, METH_VARARGS, scan_doc},
    {"pack_buckets", (PyCFunction)HourTables_pack_buckets, METH_VARARGS, pack_buckets_doc},
    {"count_new", (PyCFunction)HourTables_count_new, METH_O, count_new_doc},
    {"cost", (PyCFunction)HourTables_cost, METH_O, cost_doc},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef HourTables_getset[] = {
    {"keys", (getter)HourTables_get_keys, NULL, "key-hours held, summed over hours", NULL},
    {"newest", (getter)HourTables_get_newest, NULL, "the highest hour held, or -1", NULL},
    {"nbytes", (getter)HourTables_get_nbytes, NULL,
     "bytes the tables allocate (entries, slots, names, hours), counted exactly", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods HourTables_as_sequence = {
    .sq_length = (lenfunc)HourTables_len,
};

PyDoc_STRVAR(HourTables_doc,
"HourTables()\n\n"
"The summed flows of one partition: hour -> (src_app, dest_app, vpc_id) -> (bytes_tx,\n"
"bytes_rx). len() is the number of hours held. Not thread-safe: the owner's lock serialises\n"
"merge and drop_before against every other call.");

static PyTypeObject HourTables_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "flowagg.store.table.HourTables",
    .tp_basicsize = sizeof(HourTables),
    .tp_dealloc = (destructor)HourTables_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = HourTables_doc,
    .tp_methods = HourTables_methods,
    .tp_getset = HourTables_getset,
    .tp_as_sequence = &HourTables_as_sequence,
    .tp_new = HourTables_new,
};

/* -- the allocator ---------------------------------------------------------------------------- */

PyDoc_STRVAR(tune_allocator_doc,
"tune_allocator(arenas, mmap_threshold) -> bool\n\n"
"Ask glibc's malloc for at most `arenas` arenas (each thread that allocates may otherwise get\n"
"one of its own, which keeps the memory freed in it) and to map every block of\n"
"`mmap_threshold` bytes or more on its own (so that freeing it returns it to the system; a\n"
"fixed threshold also stops glibc from raising it after such a block is freed). False where\n"
"the C library is not glibc.");

static PyObject *
table_tune_allocator(PyObject *Py_UNUSED(module), PyObject *args)
{
    int arenas, threshold;
    if (!PyArg_ParseTuple(args, "ii:tune_allocator", &arenas, &threshold)) {
        return NULL;
    }
#ifdef __GLIBC__
    int done = mallopt(M_ARENA_MAX, arenas) == 1 && mallopt(M_MMAP_THRESHOLD, threshold) == 1;
    return PyBool_FromLong(done);
#else
    (void)arenas;
    (void)threshold;
    Py_RETURN_FALSE;
#endif
}

PyDoc_STRVAR(trim_doc,
"trim() -> bool\n\n"
"Give the memory malloc holds free back to the system (glibc's malloc_trim): after retention\n"
"dropped hours, or a large request was freed. Releases the GIL meanwhile.");

static PyObject *
table_trim(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
#ifdef __GLIBC__
    int released;
    Py_BEGIN_ALLOW_THREADS
    released = malloc_trim(0);
    Py_END_ALLOW_THREADS
    return PyBool_FromLong(released);
#else
    Py_RETURN_FALSE;
#endif
}

PyDoc_STRVAR(set_max_entries_doc,
"_set_max_entries(n) -> previous\n\n"
"For tests: the most keys (and names) an hour may hold, normally 2**31 - 1, so that TableFull\n"
"can be seen without filling an hour that far. Not for use while another thread merges.");

static PyObject *
table_set_max_entries(PyObject *Py_UNUSED(module), PyObject *arg)
{
    unsigned long n = PyLong_AsUnsignedLong(arg);
    if (n == (unsigned long)-1 && PyErr_Occurred()) {
        return NULL;
    }
    if (n < 1 || n > MAX_ENTRIES) {
        PyErr_SetString(PyExc_ValueError, "n must be between 1 and 2**31 - 1");
        return NULL;
    }
    uint32_t previous = max_entries;
    max_entries = (uint32_t)n;
    return PyLong_FromUnsignedLong(previous);
}

static PyMethodDef allocator_functions[] = {
    {"tune_allocator", table_tune_allocator, METH_VARARGS, tune_allocator_doc},
    {"trim", table_trim, METH_NOARGS, trim_doc},
    {"_set_max_entries", table_set_max_entries, METH_O, set_max_entries_doc},
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(module_doc,
"The hour tables of a partition and the per-flow work on batches, in C (see table.c).");

static struct PyModuleDef table_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "flowagg.store.table",
    .m_doc = module_doc,
    .m_size = -1,
    .m_methods = records_functions,
};

PyMODINIT_FUNC
PyInit_table(void)
{
    if (hash_seed[0] == 0) {
        if (getrandom(hash_seed, sizeof(hash_seed), 0) != (ssize_t)sizeof(hash_seed)) {
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        hash_start = hash_seed[0] ^ mum(hash_seed[0] ^ hash_seed[1], hash_seed[2]);
    }
    if (records_init() < 0) {
        return NULL;
    }
    if (PyType_Ready(&HourTables_Type) < 0 || PyType_Ready(&Groups_Type) < 0
        || PyType_Ready(&Pack_Type) < 0 || PyType_Ready(&Sums_Type) < 0) {
        return NULL;
    }
    if (TableFull == NULL) {
        TableFull = PyErr_NewExceptionWithDoc(
            "flowagg.store.table.TableFull",
            "An hour would hold more keys or names than 32-bit numbers address (2**31), or a\n"
            "batch more flows; nothing was changed. Not a lack of memory (MemoryError).",
            NULL, NULL);
        if (TableFull == NULL) {
            return NULL;
        }
    }
    PyObject *module = PyModule_Create(&table_module);
    if (module == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(module, "HourTables", (PyObject *)&HourTables_Type) < 0
        || PyModule_AddObjectRef(module, "Groups", (PyObject *)&Groups_Type) < 0
        || PyModule_AddObjectRef(module, "Pack", (PyObject *)&Pack_Type) < 0
        || PyModule_AddObjectRef(module, "Sums", (PyObject *)&Sums_Type) < 0
        || PyModule_AddFunctions(module, pack_functions) < 0
        || PyModule_AddFunctions(module, allocator_functions) < 0
        || PyModule_AddFunctions(module, slicing_functions) < 0
        || PyModule_AddObjectRef(module, "TableFull", TableFull) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
