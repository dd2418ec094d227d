/* Shared by the C files of flowagg.store.table: the layout of an hour's table, hashing, and
 * the functions one file offers the others. See tables.c for what the module does. */

#ifndef FLOWAGG_TABLE_H
#define FLOWAGG_TABLE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef unsigned __int128 u128;

#define U64_MAX UINT64_MAX
#define SLOT_NONE 0u
#define NAME_ESCAPE 0x80000000u /* Name.length flag: JSON must escape some byte of the name */
#define MAX_NAME_LENGTH 0x7fffffffu
#define MAX_ENTRIES 0x7fffffffu /* per hour; slots stay addressable by 32-bit numbers */
extern uint32_t max_entries;    /* MAX_ENTRIES, lowered only by tests (_set_max_entries) */
#define RELEASE_GIL_AT 512      /* flows or rows from which a call gives up the GIL */
#define SMALL 8                 /* up to this many entries (names) an hour has no slots for
                                   them: a lookup compares the short hashes of all of them */

/* What a step that may run without the GIL returns: 0, or why it failed (nothing changed). */
enum { STEP_OK = 0, STEP_NO_MEMORY = -1, STEP_OVERFLOW = -2, STEP_FULL = -3 };

/* -- hashing ---------------------------------------------------------------------------------- */

extern uint64_t hash_seed[4]; /* random per process, set once at import (tables.c) */
extern uint64_t hash_start;   /* derived from hash_seed at import: every hash starts here */

static inline uint64_t
mum(uint64_t a, uint64_t b)
{
    u128 r = (u128)a * b;
    return (uint64_t)r ^ (uint64_t)(r >> 64);
}

static inline uint64_t
read64(const unsigned char *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static inline uint64_t
read32(const unsigned char *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* 1 to 3 bytes, each read once whatever the length. */
static inline uint64_t
read_small(const unsigned char *p, size_t n)
{
    return ((uint64_t)p[0] << 16) | ((uint64_t)p[n >> 1] << 8) | p[n - 1];
}

/* Mix `n` bytes into the running state `seed`, after wyhash (final version 4): short inputs are
 * read as two overlapping words, longer ones 16 bytes at a time. */
static inline uint64_t
absorb(uint64_t seed, const char *data, size_t n)
{
    const unsigned char *p = (const unsigned char *)data;
    uint64_t a, b;
    if (n <= 16) {
        if (n >= 4) {
            size_t step = (n >> 3) << 2;
            a = (read32(p) << 32) | read32(p + step);
            b = (read32(p + n - 4) << 32) | read32(p + n - 4 - step);
        }
        else if (n > 0) {
            a = read_small(p, n);
            b = 0;
        }
        else {
            a = b = 0;
        }
    }
    else {
        size_t left = n;
        while (left > 16) {
            seed = mum(read64(p) ^ hash_seed[1], read64(p + 8) ^ seed);
            p += 16;
            left -= 16;
        }
        a = read64(p + left - 16);
        b = read64(p + left - 8);
    }
    return mum(a ^ hash_seed[1] ^ n, b ^ seed);
}

/* The hash of a name. */
static inline uint64_t
hash_bytes(const char *data, size_t n)
{
    return mum(absorb(hash_start, data, n) ^ hash_seed[3], hash_seed[2]);
}

static inline uint64_t
hash_hour(uint64_t hour)
{
    return mum(hour ^ hash_seed[0], hash_seed[1]);
}

/* The 32 bits stored with an entry or name: its slot position and its tag. */
static inline uint32_t
short_hash(uint64_t h)
{
    return (uint32_t)(h >> 32);
}

/* -- the table of one hour (hour.c) --------------------------------------------------------- */

typedef struct {
    uint64_t count[2]; /* bytes_tx, bytes_rx: the low 64 bits (the rest in Hour.high) */
    uint32_t name[3];  /* src_app, dest_app, vpc_id: numbers of names in Hour.names */
    uint32_t hash;     /* short_hash of the key */
} Entry;

typedef struct {
    uint64_t offset; /* of the name's UTF-8 bytes in Hour.arena */
    uint32_t length; /* in bytes, | NAME_ESCAPE if JSON must escape one of them */
    uint32_t hash;   /* short_hash of the name */
} Name;

typedef struct {
    uint32_t index; /* entry (or name) number + 1; SLOT_NONE for an empty slot */
    uint32_t hash;  /* its short_hash, so that most probes need not look further */
} Slot;

/* Fields ordered so that no padding is left: 112 bytes. */
typedef struct {
    uint64_t hour;
    Entry *entries;   /* len used of cap, in order of first appearance */
    Slot *slots;      /* mask + 1 slots (a power of 2), at most 3/4 used; NULL while len <= SMALL */
    Name *names;      /* nnames used of names_cap */
    Slot *name_slots; /* as slots, over names; NULL while nnames <= SMALL */
    char *arena;      /* the names' bytes, arena_len used of arena_cap */
    uint64_t (*high)[2]; /* NULL, or cap pairs: the bits above 64 of each counter */
    uint32_t len, cap, mask;
    uint32_t nnames, names_cap, name_mask;
    uint64_t arena_len, arena_cap;
    u128 max_count; /* the largest counter of the hour, for the overflow check */
} Hour;
_Static_assert(sizeof(Hour) == 112, "an Hour without padding");

static inline const char *
name_bytes(const Hour *h, uint32_t name)
{
    return h->arena + h->names[name].offset;
}

static inline uint32_t
name_length(const Hour *h, uint32_t name)
{
    return h->names[name].length & ~NAME_ESCAPE;
}

static inline u128
entry_count(const Hour *h, uint32_t row, int column)
{
    uint64_t high = h->high != NULL ? h->high[row][column] : 0;
    return ((u128)high << 64) | h->entries[row].count[column];
}

/* Capacity for at least `need` items: grow by half (by double while small), never less. */
static inline uint64_t
grown(uint64_t cap, uint64_t need)
{
    uint64_t next = cap < 64 ? cap * 2 : cap + cap / 2;
    if (next < 4) {
        next = 4;
    }
    return next > need ? next : need;
}

/* Slots for `items` items at most 3/4 full: a power of two. */
static inline uint64_t
slots_for(uint64_t items)
{
    uint64_t size = 8;
    while (size * 3 / 4 < items) {
        size *= 2;
    }
    return size;
}

/* Place item `index` (0-based) with short hash `hash` into a slot array known to have room. */
static inline void
slot_put(Slot *slots, uint32_t mask, uint32_t index, uint32_t hash)
{
    uint32_t i = hash & mask;
    while (slots[i].index != SLOT_NONE) {
        i = (i + 1) & mask;
    }
    slots[i].index = index + 1;
    slots[i].hash = hash;
}

/* memcmp(a, b, n) == 0 without a call, for the short strings names are. */
static inline int
same_bytes(const char *a, const char *b, uint32_t n)
{
    while (n >= 8) {
        uint64_t x, y;
        memcpy(&x, a, 8);
        memcpy(&y, b, 8);
        if (x != y) {
            return 0;
        }
        a += 8;
        b += 8;
        n -= 8;
    }
    while (n > 0) {
        if (*a++ != *b++) {
            return 0;
        }
        n--;
    }
    return 1;
}

static inline int
name_equals(const Hour *h, uint32_t name, const char *bytes, uint32_t length)
{
    return name_length(h, name) == length && same_bytes(name_bytes(h, name), bytes, length);
}

/* A key being looked up: its three names as UTF-8. */
typedef struct {
    const char *name[3];
    uint32_t length[3];
} KeyRef;

/* The hash of a key: its three names in order, each with its length. */
static inline uint64_t
hash_key(const KeyRef *key)
{
    uint64_t h = hash_start;
    for (int f = 0; f < 3; f++) {
        h = absorb(h, key->name[f], key->length[f]);
    }
    return mum(h ^ hash_seed[3], hash_seed[2]);
}

/* Add to a counter. The caller has made sure (merge phase 1) that it cannot overflow: below
 * 2**64 while `high` is NULL, below 2**128 always. */
static inline void
hour_add(Hour *h, uint32_t row, int column, u128 amount)
{
    uint64_t *low = &h->entries[row].count[column];
    uint64_t before = *low;
    *low = before + (uint64_t)amount;
    if (h->high != NULL) {
        h->high[row][column] += (uint64_t)(amount >> 64) + (*low < before);
    }
    u128 value = entry_count(h, row, column);
    if (value > h->max_count) {
        h->max_count = value;
    }
}

/* Ask the cache for what hour_find(h, key, hash) reads first: the key's slot. */
static inline void
hour_prefetch_slot(const Hour *h, uint32_t hash)
{
    if (h->slots != NULL) {
        __builtin_prefetch(&h->slots[hash & h->mask]);
    }
}

/* ... and then, once the slot is at hand, the entry it points to if its hash bits match. */
static inline void
hour_prefetch_entry(const Hour *h, uint32_t hash)
{
    if (h->slots != NULL) {
        const Slot *s = &h->slots[hash & h->mask];
        if (s->index != SLOT_NONE && s->hash == hash) {
            __builtin_prefetch(&h->entries[s->index - 1]);
        }
    }
}

/* The capacities of an hour's arrays: what it holds, or what hour_plan says it will. */
typedef struct {
    uint64_t cap, slots, names_cap, name_slots, arena_cap; /* slots: 0 for none */
    int high;                                              /* the carry words exist */
} Caps;

Hour *hour_new(uint64_t hour);
void hour_free(Hour *h);
/* Bytes an hour allocates (the Hour itself and every array), exactly. */
size_t hour_nbytes(const Hour *h);
size_t caps_nbytes(const Caps *c);
Caps hour_caps(const Hour *h);
/* The capacities `h` needs for `keys` more entries, `names` more names of `bytes` bytes, and
 * the carry words if `need_high`: STEP_OK, or STEP_FULL past MAX_ENTRIES. hour_reserve then
 * allocates exactly those, so hour_plan is also what a merge will cost. */
int hour_plan(const Hour *h, uint64_t keys, uint64_t names, uint64_t bytes, int need_high,
              Caps *out);
Slot *slots_rebuild(uint64_t size, uint32_t count, const void *items, size_t stride,
                    size_t hash_at);
int hour_reserve(Hour *h, const Caps *caps);
int64_t hour_find_name(const Hour *h, const char *bytes, uint32_t length, uint32_t hash);
uint32_t hour_find(const Hour *h, const KeyRef *key, uint32_t hash);
/* Append a new key (known to be absent) whose names hash to `name_hash`. */
uint32_t hour_insert(Hour *h, const KeyRef *key, uint32_t hash, const uint32_t name_hash[3]);
size_t hour_json_length(const Hour *h);
char *hour_json_write(const Hour *h, char *out);

/* -- reading flow records (records.c) --------------------------------------------------------- */

enum { F_SRC, F_DEST, F_VPC, F_TX, F_RX, F_HOUR, N_FIELDS };
extern const char *const FIELD_NAMES[N_FIELDS];

/* Where a type keeps each field: the byte offset of its slot (msgspec Structs and __slots__
 * classes have member descriptors), or -1 to read it with getattr. */
typedef struct {
    PyTypeObject *type; /* strong reference in the cache (a copy borrows it); NULL unused */
    unsigned int version; /* the type's tp_version_tag when read: changed by a new attribute */
    Py_ssize_t offset[N_FIELDS];
    int all_slots;      /* every offset is >= 0: fields can be read without running Python */
} Layout;


/* One flow (or snapshot row) of a batch being merged. */
typedef struct {
    KeyRef key;        /* the names' UTF-8, kept alive by `str` */
    PyObject *str[3];  /* strong references to the three name strings */
    u128 count[2];     /* bytes_tx, bytes_rx */
    uint64_t hour;
    uint32_t group;    /* which hour of the batch (Batch.groups), or SKIPPED */
    uint32_t hash;     /* short_hash of the key */
    uint32_t row;      /* the key's row + 1 once known to exist before this merge, else 0 */
    uint32_t name_hash[3]; /* short hashes of the names, set for an item whose key is new */
} Item;

#define SKIPPED UINT32_MAX

static inline void
item_init(Item *item)
{
    item->str[0] = item->str[1] = item->str[2] = NULL;
    item->group = 0;
    item->row = 0;
}

int records_init(void);
int read_flow(PyObject *flow, Layout *current, Item *item);
/* read_flow without references, for a record whose fields all sit in slots: the names point
 * into strings the record keeps alive. 1 if read, 0 if the type needs read_flow (some field
 * is read by getattr), -1 with an exception set. Runs no Python code. */
int view_flow(PyObject *flow, Layout *current, Item *item);
int read_row(PyObject *row, uint64_t hour, Item *item);
void items_release(Item *items, Py_ssize_t n);
int as_u64(PyObject *value, const char *what, uint64_t *out);
PyObject *long_from_u128(u128 value);
extern PyMethodDef records_functions[]; /* split, hour_bounds, first_outside */
extern PyMethodDef slicing_functions[]; /* array_slices */

/* -- packs (pack.c) --------------------------------------------------------------------------- */

/* One flow of a Pack: its names are `length[f]` bytes at `offset[f]` of the pack's arena. */
typedef struct {
    uint64_t hour;
    uint64_t count[2]; /* bytes_tx, bytes_rx */
    uint32_t offset[3];
    uint32_t length[3];
} PackItem;

typedef struct {
    PyObject_HEAD
    PackItem *items; /* n, owned */
    Py_ssize_t n;
    char *arena;     /* the names' bytes, arena_len of them, owned */
    size_t arena_len;
} Pack;

extern PyTypeObject Pack_Type;
#define Pack_Check(op) Py_IS_TYPE((op), &Pack_Type)
extern PyMethodDef pack_functions[]; /* pack */

/* -- the tables of a partition (tables.c) ------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    Hour **hours;      /* nhours used of hours_cap, in order of creation */
    uint32_t nhours, hours_cap;
    Slot *hour_slots;  /* open addressing over hours, keyed by hash_hour */
    uint32_t hour_mask;
    uint64_t keys;     /* entries summed over hours */
    uint64_t nbytes;   /* bytes the tables allocate: every hour's hour_nbytes, the hours
                        * array and the hour slots; kept exact by every change */
    /* Uses in progress without the GIL: > 0 readers, -1 one writer, 0 none. Changed only with
     * the GIL held, so a check and its update are one step. */
    int busy;
} HourTables;

Hour *tables_find(const HourTables *self, uint64_t hour);
/* 0 if the tables may be read (writing: 0) or changed (writing: 1) now, else -1 with
 * RuntimeError set: another thread uses them without the GIL. */
int check_idle(HourTables *self, int writing);
/* Raise for a failed step: MemoryError, OverflowError or TableFull. */
PyObject *step_error(int status, const char *what);
extern PyObject *TableFull; /* the exception: an hour or a batch past what 32 bits address */

/* -- queries (groups.c) ------------------------------------------------------------------------ */

extern PyTypeObject Groups_Type;
PyObject *HourTables_scan(HourTables *self, PyObject *args);
extern const char scan_doc[];

/* -- packed rows for the Redis store (packed.c) ------------------------------------------------ */

extern PyTypeObject Sums_Type;
PyObject *HourTables_pack_buckets(HourTables *self, PyObject *args);
extern const char pack_buckets_doc[];

#endif /* FLOWAGG_TABLE_H */
