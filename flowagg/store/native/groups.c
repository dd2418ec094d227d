/* Queries over hours: the Groups accumulator, and HourTables.scan which fills it.
 *
 * A query (the top talkers over a range of hours, grouped by some of the three names, filtered
 * by exact names) looks at every key-hour of the range once. For each hour the store calls
 *
 *     tables.scan(hour, groups, filters)
 *
 * which adds every row of the hour that passes the filters to `groups`, under the names the
 * query groups by; then `groups.top(limit, order)` picks the largest groups, with what is left
 * as "other" and the total, and `groups.values(keys)` reads given groups (the per-hour series).
 *
 * Filters are resolved to the hour's name numbers first (a name the hour does not hold matches
 * nothing), so a row is tested by three array lookups. Grouping by one field sums per name
 * number into a small array before touching the Groups table, so such a scan costs little more
 * than reading the rows; grouping by two or three fields adds each row to the Groups table.
 *
 * Group sums are 128-bit, like the tables' counters: exact for any sum of flows that can exist
 * (a total of 2**128 bytes needs 2**65 maximal flows); past that a scan raises OverflowError.
 *
 * A Groups belongs to one query, in one thread; while a scan runs without the GIL, any other use
 * of the same Groups raises RuntimeError (see `busy`).
 */

#include "table.h"

/* A group: its names and sums. The names are kept in Groups.arena as, for each field grouped
 * by, its length (4 bytes, native order) then its UTF-8 bytes: unambiguous. A group's hash comes
 * from its names' short hashes, which every hour keeps with its names, so a scan hashes no byte. */
typedef struct {
    u128 count[2];   /* bytes_tx, bytes_rx */
    uint64_t offset; /* of the encoded names in Groups.arena */
    uint32_t length; /* bytes of the encoded names */
    uint32_t hash;   /* short_hash of the names */
} GroupEntry;

typedef struct {
    PyObject_HEAD
    int nby;              /* fields grouped by: 1 to 3 */
    int by[3];            /* F_SRC, F_DEST or F_VPC each, in the order asked */
    GroupEntry *entries;  /* len used of cap, in order of first appearance */
    uint32_t len, cap;
    Slot *slots;          /* open addressing over entries, at most 3/4 full; NULL while empty */
    uint32_t mask;
    char *arena;          /* encoded names, arena_len used of arena_cap */
    uint64_t arena_len, arena_cap;
    uint64_t scanned;     /* rows looked at by scans into this Groups */
    int busy;             /* 1 while a scan fills it without the GIL */
    /* Fixed groups (made with `keys`): no group is added by a scan; what matches none of the
     * given groups is summed here, with how many distinct groups it came from unknown. */
    int fixed;
    u128 rest[2];
} Groups;

/* -- the table of groups ---------------------------------------------------------------------- */

/* The hash of a group from its names' short hashes (Name.hash, or short_hash(hash_bytes(name)):
 * the same for the same bytes in any hour), in the order grouped by: no byte is hashed again
 * per row. */
static inline uint32_t
group_hash(const Groups *g, const uint32_t name_hash[3])
{
    uint64_t h = hash_start;
    for (int i = 0; i < g->nby; i++) {
        h = mum(h ^ name_hash[g->by[i]] ^ hash_seed[1], hash_seed[2] + (uint64_t)i);
    }
    return short_hash(mum(h ^ hash_seed[3], hash_seed[0]));
}

/* Whether the group's encoded names are these names (indexed by field). */
static inline int
group_matches(const Groups *g, const GroupEntry *e, const char *const name[3],
              const uint32_t length[3])
{
    const char *p = g->arena + e->offset;
    for (int i = 0; i < g->nby; i++) {
        int f = g->by[i];
        uint32_t stored;
        memcpy(&stored, p, sizeof(uint32_t));
        if (stored != length[f] || !same_bytes(p + sizeof(uint32_t), name[f], stored)) {
            return 0;
        }
        p += sizeof(uint32_t) + stored;
    }
    return 1;
}

static GroupEntry *
groups_find(const Groups *g, const char *const name[3], const uint32_t length[3], uint32_t hash)
{
    if (g->slots == NULL) {
        return NULL;
    }
    for (uint32_t i = hash & g->mask;; i = (i + 1) & g->mask) {
        const Slot *s = &g->slots[i];
        if (s->index == SLOT_NONE) {
            return NULL;
        }
        GroupEntry *e = &g->entries[s->index - 1];
        if (s->hash == hash && group_matches(g, e, name, length)) {
            return e;
        }
    }
}

/* The group of these names, added with zero sums if new; NULL without memory. */
static GroupEntry *
groups_find_or_add(Groups *g, const char *const name[3], const uint32_t length[3], uint32_t hash)
{
    GroupEntry *found = groups_find(g, name, length, hash);
    if (found != NULL) {
        return found;
    }
    uint64_t encoded = 0;
    for (int i = 0; i < g->nby; i++) {
        encoded += sizeof(uint32_t) + length[g->by[i]];
    }
    if (encoded > UINT32_MAX) {
        return NULL;
    }
    if (g->len == g->cap) {
        uint64_t cap = grown(g->cap, (uint64_t)g->cap + 1);
        if (cap > MAX_ENTRIES) {
            return NULL;
        }
        GroupEntry *entries = PyMem_RawRealloc(g->entries, cap * sizeof(GroupEntry));
        if (entries == NULL) {
            return NULL;
        }
        g->entries = entries;
        g->cap = (uint32_t)cap;
    }
    if (g->slots == NULL || (uint64_t)g->len + 1 > ((uint64_t)g->mask + 1) * 3 / 4) {
        uint64_t size = slots_for((uint64_t)g->len + 1);
        Slot *slots = slots_rebuild(size, g->len, g->entries, sizeof(GroupEntry),
                                    offsetof(GroupEntry, hash));
        if (slots == NULL) {
            return NULL;
        }
        PyMem_RawFree(g->slots);
        g->slots = slots;
        g->mask = (uint32_t)(size - 1);
    }
    if (g->arena_len + encoded > g->arena_cap) {
        uint64_t cap = grown(g->arena_cap, g->arena_len + encoded);
        char *arena = PyMem_RawRealloc(g->arena, cap);
        if (arena == NULL) {
            return NULL;
        }
        g->arena = arena;
        g->arena_cap = cap;
    }
    uint32_t index = g->len++;
    GroupEntry *e = &g->entries[index];
    e->count[0] = e->count[1] = 0;
    e->offset = g->arena_len;
    e->length = (uint32_t)encoded;
    e->hash = hash;
    char *out = g->arena + g->arena_len;
    for (int i = 0; i < g->nby; i++) {
        int f = g->by[i];
        memcpy(out, &length[f], sizeof(uint32_t));
        memcpy(out + sizeof(uint32_t), name[f], length[f]);
        out += sizeof(uint32_t) + length[f];
    }
    g->arena_len += encoded;
    slot_put(g->slots, g->mask, index, hash);
    return e;
}

enum { ADD_OK = 0, ADD_NO_MEMORY = -1, ADD_OVERFLOW = -2 };

/* Add sums to the group of the given names (indexed by field, with their short hashes); to
 * `rest` if the groups are fixed and these names are not one of them. */
static int groups_add_hashed(Groups *g, const char *const name[3], const uint32_t length[3],
                             uint32_t hash, const u128 count[2]);

static int
groups_add(Groups *g, const char *const name[3], const uint32_t length[3],
           const uint32_t name_hash[3], const u128 count[2])
{
    return groups_add_hashed(g, name, length, group_hash(g, name_hash), count);
}

/* groups_add with the group's hash already known. */
static int
groups_add_hashed(Groups *g, const char *const name[3], const uint32_t length[3], uint32_t hash,
                  const u128 count[2])
{
    u128 *sums;
    if (g->fixed) {
        GroupEntry *e = groups_find(g, name, length, hash);
        sums = e != NULL ? e->count : g->rest;
    }
    else {
        GroupEntry *e = groups_find_or_add(g, name, length, hash);
        if (e == NULL) {
            return ADD_NO_MEMORY;
        }
        sums = e->count;
    }
    for (int c = 0; c < 2; c++) {
        if (__builtin_add_overflow(sums[c], count[c], &sums[c])) {
            return ADD_OVERFLOW;
        }
    }
    return ADD_OK;
}

/* -- scanning an hour ------------------------------------------------------------------------- */

/* The rows of one hour that a scan keeps: for each field, NULL (any name) or a flag per name
 * number of the hour. */
typedef struct {
    uint8_t *allow[3];
} Filter;

static void
filter_free(Filter *filter)
{
    for (int f = 0; f < 3; f++) {
        PyMem_Free(filter->allow[f]);
        filter->allow[f] = NULL;
    }
}

/* Resolve `filters` (a tuple of three: None, or a tuple of str per field) against an hour's
 * names. Returns 1 if some row may match, 0 if none can, -1 with an exception set. */
static int
filter_resolve(const Hour *h, PyObject *filters, Filter *out)
{
    if (!PyTuple_Check(filters) || PyTuple_GET_SIZE(filters) != 3) {
        PyErr_SetString(PyExc_TypeError, "filters must be a tuple of three (None or a tuple)");
        return -1;
    }
    for (int f = 0; f < 3; f++) {
        PyObject *values = PyTuple_GET_ITEM(filters, f);
        if (values == Py_None) {
            continue;
        }
        if (!PyTuple_Check(values)) {
            PyErr_SetString(PyExc_TypeError, "each filter must be None or a tuple of str");
            return -1;
        }
        out->allow[f] = PyMem_Calloc(h->nnames > 0 ? h->nnames : 1, 1);
        if (out->allow[f] == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        int any = 0;
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(values); i++) {
            PyObject *value = PyTuple_GET_ITEM(values, i);
            if (!PyUnicode_Check(value)) {
                PyErr_SetString(PyExc_TypeError, "filter values must be str");
                return -1;
            }
            Py_ssize_t length;
            const char *bytes = PyUnicode_AsUTF8AndSize(value, &length);
            if (bytes == NULL) {
                return -1;
            }
            if ((size_t)length > MAX_NAME_LENGTH) {
                continue; /* longer than any name held */
            }
            uint32_t hash = short_hash(hash_bytes(bytes, (size_t)length));
            int64_t name = hour_find_name(h, bytes, (uint32_t)length, hash);
            if (name >= 0) {
                out->allow[f][name] = 1;
                any = 1;
            }
        }
        if (!any) {
            return 0;
        }
    }
    return 1;
}

static inline int
filter_keeps(const Filter *filter, const Entry *e)
{
    for (int f = 0; f < 3; f++) {
        if (filter->allow[f] != NULL && !filter->allow[f][e->name[f]]) {
            return 0;
        }
    }
    return 1;
}

/* Add one field's sums, one per name number. */
typedef struct {
    u128 count[2];
    int seen;
} NameSum;

/* Add the rows of `h` that `filter` keeps to `g`. Works on C memory only (no GIL needed). */
static int
scan_hour(const Hour *h, const Filter *filter, Groups *g)
{
    const char *name[3] = {NULL, NULL, NULL};
    uint32_t length[3] = {0, 0, 0};
    uint32_t name_hash[3] = {0, 0, 0};
    if (g->nby == 1) {
        /* Sum per name number first: few names, many rows. */
        int by = g->by[0];
        NameSum *sums = PyMem_RawCalloc(h->nnames > 0 ? h->nnames : 1, sizeof(NameSum));
        if (sums == NULL) {
            return ADD_NO_MEMORY;
        }
        for (uint32_t r = 0; r < h->len; r++) {
            const Entry *e = &h->entries[r];
            if (!filter_keeps(filter, e)) {
                continue;
            }
            NameSum *s = &sums[e->name[by]];
            for (int c = 0; c < 2; c++) {
                if (__builtin_add_overflow(s->count[c], entry_count(h, r, c), &s->count[c])) {
                    PyMem_RawFree(sums);
                    return ADD_OVERFLOW;
                }
            }
            s->seen = 1;
        }
        int status = ADD_OK;
        for (uint32_t n = 0; n < h->nnames && status == ADD_OK; n++) {
            if (sums[n].seen) {
                name[by] = name_bytes(h, n);
                length[by] = name_length(h, n);
                name_hash[by] = h->names[n].hash;
                status = groups_add(g, name, length, name_hash, sums[n].count);
            }
        }
        PyMem_RawFree(sums);
        return status;
    }
    /* Rows come in blocks: the slots their groups hash to are fetched into the cache for a
     * whole block before any is looked up, so the lookups do not wait on memory one by one. */
    enum { BLOCK = 16 };
    uint32_t hashes[BLOCK];
    for (uint32_t start = 0; start < h->len; start += BLOCK) {
        uint32_t end = start + BLOCK < h->len ? start + BLOCK : h->len;
        for (uint32_t r = start; r < end; r++) {
            const Entry *e = &h->entries[r];
            for (int f = 0; f < 3; f++) {
                name_hash[f] = h->names[e->name[f]].hash;
            }
            hashes[r - start] = group_hash(g, name_hash);
            if (g->slots != NULL) {
                __builtin_prefetch(&g->slots[hashes[r - start] & g->mask]);
            }
        }
        for (uint32_t r = start; r < end; r++) {
            const Entry *e = &h->entries[r];
            if (!filter_keeps(filter, e)) {
                continue;
            }
            for (int f = 0; f < 3; f++) {
                name[f] = name_bytes(h, e->name[f]);
                length[f] = name_length(h, e->name[f]);
            }
            u128 count[2] = {entry_count(h, r, 0), entry_count(h, r, 1)};
            int status = groups_add_hashed(g, name, length, hashes[r - start], count);
            if (status != ADD_OK) {
                return status;
            }
        }
    }
    return ADD_OK;
}

const char scan_doc[] =
    "scan(hour, groups, filters) -> rows looked at\n\n"
    "Add the rows of `hour` whose names pass `filters` (a tuple of three, one per field:\n"
    "None for any name, or a tuple of the names kept) to the Groups `groups`.";

PyObject *
HourTables_scan(HourTables *self, PyObject *args)
{
    PyObject *hour_arg, *filters;
    Groups *g;
    if (!PyArg_ParseTuple(args, "OO!O:scan", &hour_arg, &Groups_Type, &g, &filters)) {
        return NULL;
    }
    uint64_t hour;
    if (as_u64(hour_arg, "hour", &hour) < 0 || check_idle(self, 0) < 0) {
        return NULL;
    }
    if (g->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Groups is in use by another thread");
        return NULL;
    }
    const Hour *h = tables_find(self, hour);
    if (h == NULL) {
        return PyLong_FromLong(0);
    }
    Filter filter = {{NULL, NULL, NULL}};
    self->busy++; /* resolving the filters reads their strings: no merge meanwhile */
    int may_match = filter_resolve(h, filters, &filter);
    self->busy--;
    if (may_match <= 0) {
        filter_free(&filter);
        return may_match < 0 ? NULL : PyLong_FromUnsignedLong(h->len);
    }
    int status;
    self->busy++; /* a reader: merges refuse meanwhile */
    g->busy = 1;
    if (h->len >= RELEASE_GIL_AT) {
        Py_BEGIN_ALLOW_THREADS
        status = scan_hour(h, &filter, g);
        Py_END_ALLOW_THREADS
    }
    else {
        status = scan_hour(h, &filter, g);
    }
    g->busy = 0;
    self->busy--;
    filter_free(&filter);
    g->scanned += h->len;
    if (status == ADD_NO_MEMORY) {
        return PyErr_NoMemory();
    }
    if (status == ADD_OVERFLOW) {
        PyErr_SetString(PyExc_OverflowError, "a group's sum passed 2**128");
        return NULL;
    }
    return PyLong_FromUnsignedLong(h->len);
}

/* -- Groups: creation and reading ------------------------------------------------------------- */

/* A group's names given from Python: a tuple of str in the order grouped by, read into arrays
 * indexed by field (pointing into the strings, which the caller's tuple keeps alive). */
typedef struct {
    const char *name[3];
    uint32_t length[3];
    uint32_t hash; /* group_hash */
} KeyNames;

static int read_key(const Groups *g, PyObject *key, KeyNames *out);
static PyObject *
Groups_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"by", "keys", NULL};
    PyObject *by, *keys = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!|O:Groups", kwlist, &PyTuple_Type, &by,
                                     &keys)) {
        return NULL;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(by);
    if (n < 1 || n > 3) {
        PyErr_SetString(PyExc_ValueError, "by must name 1 to 3 fields");
        return NULL;
    }
    int fields[3];
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyTuple_GET_ITEM(by, i);
        int found = -1;
        for (int f = F_SRC; f <= F_VPC && PyUnicode_Check(item); f++) {
            if (PyUnicode_CompareWithASCIIString(item, FIELD_NAMES[f]) == 0) {
                found = f;
            }
        }
        for (Py_ssize_t j = 0; j < i && found >= 0; j++) {
            if (fields[j] == found) {
                found = -1;
            }
        }
        if (found < 0) {
            PyErr_SetString(PyExc_ValueError,
                            "by must hold distinct names of src_app, dest_app and vpc_id");
            return NULL;
        }
        fields[i] = found;
    }
    Groups *g = (Groups *)type->tp_alloc(type, 0); /* zeroed: no groups */
    if (g == NULL) {
        return NULL;
    }
    g->nby = (int)n;
    memcpy(g->by, fields, sizeof(int) * n);
    if (keys == Py_None) {
        return (PyObject *)g;
    }
    /* Fixed groups: add each key (a tuple of names) once, in the order given. */
    /* A tuple copy: reading may run Python code (a garbage collection), which could change a
     * list being read. */
    PyObject *seq = PySequence_Tuple(keys);
    if (seq == NULL) {
        Py_DECREF(g);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(seq); i++) {
        KeyNames k;
        if (read_key(g, PyTuple_GET_ITEM(seq, i), &k) < 0) {
            Py_DECREF(seq);
            Py_DECREF(g);
            return NULL;
        }
        if (groups_find_or_add(g, k.name, k.length, k.hash) == NULL) {
            Py_DECREF(seq);
            Py_DECREF(g);
            return PyErr_NoMemory();
        }
    }
    Py_DECREF(seq);
    g->fixed = 1;
    return (PyObject *)g;
}

static void
Groups_dealloc(Groups *g)
{
    PyMem_RawFree(g->entries);
    PyMem_RawFree(g->slots);
    PyMem_RawFree(g->arena);
    Py_TYPE(g)->tp_free((PyObject *)g);
}

static int
check_groups_idle(Groups *g)
{
    if (g->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Groups is in use by another thread");
        return -1;
    }
    return 0;
}

/* The names of a group as a tuple of str, in the order grouped by. */
static PyObject *
group_names(const Groups *g, const GroupEntry *e, PyObject *row, int start)
{
    const char *p = g->arena + e->offset;
    for (int i = 0; i < g->nby; i++) {
        uint32_t length;
        memcpy(&length, p, sizeof(uint32_t));
        PyObject *name = PyUnicode_DecodeUTF8(p + sizeof(uint32_t), length, "strict");
        if (name == NULL) {
            return NULL;
        }
        PyTuple_SET_ITEM(row, start + i, name);
        p += sizeof(uint32_t) + length;
    }
    return row;
}

/* (groups, bytes_tx, bytes_rx) */
static PyObject *
summary(uint64_t groups, u128 tx, u128 rx)
{
    PyObject *t = long_from_u128(tx), *r = long_from_u128(rx);
    PyObject *result = t != NULL && r != NULL ? Py_BuildValue("KOO", groups, t, r) : NULL;
    Py_XDECREF(t);
    Py_XDECREF(r);
    return result;
}

enum { ORDER_BYTES, ORDER_TX, ORDER_RX };

/* The value a group is ranked by, as 129 bits: `carry` is the bit above the u128. */
typedef struct {
    u128 low;
    int carry;
} Rank;

static inline Rank
rank_of(const GroupEntry *e, int order)
{
    Rank r = {0, 0};
    if (order == ORDER_TX) {
        r.low = e->count[0];
    }
    else if (order == ORDER_RX) {
        r.low = e->count[1];
    }
    else {
        r.carry = __builtin_add_overflow(e->count[0], e->count[1], &r.low);
    }
    return r;
}

/* Compare the encoded names of two groups field by field, as Python compares tuples of str:
 * UTF-8 bytes order as code points do. */
static int
compare_names(const Groups *g, const GroupEntry *a, const GroupEntry *b)
{
    const char *p = g->arena + a->offset, *q = g->arena + b->offset;
    for (int i = 0; i < g->nby; i++) {
        uint32_t la, lb;
        memcpy(&la, p, sizeof(uint32_t));
        memcpy(&lb, q, sizeof(uint32_t));
        p += sizeof(uint32_t);
        q += sizeof(uint32_t);
        int c = memcmp(p, q, la < lb ? la : lb);
        if (c != 0) {
            return c;
        }
        if (la != lb) {
            return la < lb ? -1 : 1;
        }
        p += la;
        q += lb;
    }
    return 0;
}

/* > 0 if group a ranks before group b: a larger value, or the same value and smaller names. */
static int
ranks_before(const Groups *g, uint32_t a, uint32_t b, int order)
{
    Rank ra = rank_of(&g->entries[a], order), rb = rank_of(&g->entries[b], order);
    if (ra.carry != rb.carry) {
        return ra.carry > rb.carry ? 1 : -1;
    }
    if (ra.low != rb.low) {
        return ra.low > rb.low ? 1 : -1;
    }
    return -compare_names(g, &g->entries[a], &g->entries[b]);
}

/* A heap of group numbers whose root ranks last: the k best seen so far. */
static void
sift_down(const Groups *g, uint32_t *heap, uint32_t n, uint32_t i, int order)
{
    for (;;) {
        uint32_t worst = i, l = 2 * i + 1, r = l + 1;
        if (l < n && ranks_before(g, heap[worst], heap[l], order) > 0) {
            worst = l;
        }
        if (r < n && ranks_before(g, heap[worst], heap[r], order) > 0) {
            worst = r;
        }
        if (worst == i) {
            return;
        }
        uint32_t t = heap[i];
        heap[i] = heap[worst];
        heap[worst] = t;
        i = worst;
    }
}

PyDoc_STRVAR(top_doc,
"top(limit, order) -> (rows, other, total)\n\n"
"The `limit` largest groups by `order` ('bytes': bytes_tx + bytes_rx, 'bytes_tx' or\n"
"'bytes_rx'), largest first, ties by names ascending: rows of (names..., bytes_tx, bytes_rx).\n"
"other and total are (groups, bytes_tx, bytes_rx) of the remaining groups and of all.");

static PyObject *
Groups_top(Groups *g, PyObject *args)
{
    Py_ssize_t limit;
    const char *order_name;
    if (!PyArg_ParseTuple(args, "ns:top", &limit, &order_name) || check_groups_idle(g) < 0) {
        return NULL;
    }
    int order;
    if (strcmp(order_name, "bytes") == 0) {
        order = ORDER_BYTES;
    }
    else if (strcmp(order_name, "bytes_tx") == 0) {
        order = ORDER_TX;
    }
    else if (strcmp(order_name, "bytes_rx") == 0) {
        order = ORDER_RX;
    }
    else {
        PyErr_SetString(PyExc_ValueError, "order must be bytes, bytes_tx or bytes_rx");
        return NULL;
    }
    if (limit < 0) {
        PyErr_SetString(PyExc_ValueError, "limit must not be negative");
        return NULL;
    }
    uint32_t k = (uint64_t)limit < g->len ? (uint32_t)limit : g->len;
    uint32_t *heap = PyMem_Malloc(sizeof(uint32_t) * (k > 0 ? k : 1));
    if (heap == NULL) {
        return PyErr_NoMemory();
    }
    u128 total[2] = {0, 0};
    int overflow = 0;
    uint32_t n = 0;
    for (uint32_t i = 0; i < g->len; i++) {
        overflow |= __builtin_add_overflow(total[0], g->entries[i].count[0], &total[0]);
        overflow |= __builtin_add_overflow(total[1], g->entries[i].count[1], &total[1]);
        if (k == 0) {
            continue;
        }
        if (n < k) { /* fill, then heapify once full */
            heap[n++] = i;
            if (n == k) {
                for (uint32_t j = k / 2; j-- > 0;) {
                    sift_down(g, heap, k, j, order);
                }
            }
        }
        else if (ranks_before(g, i, heap[0], order) > 0) {
            heap[0] = i;
            sift_down(g, heap, k, 0, order);
        }
    }
    if (overflow) {
        PyMem_Free(heap);
        PyErr_SetString(PyExc_OverflowError, "the total passed 2**128");
        return NULL;
    }
    if (n < k) { /* fewer groups than asked for were seen: k == n == len */
        for (uint32_t j = n / 2; j-- > 0;) {
            sift_down(g, heap, n, j, order);
        }
    }
    /* Pop the root (the one ranking last) repeatedly: it goes to the end of the answer. */
    PyObject *rows = PyList_New(n);
    u128 top[2] = {0, 0};
    for (uint32_t left = n; rows != NULL && left > 0; left--) {
        const GroupEntry *e = &g->entries[heap[0]];
        PyObject *row = PyTuple_New(g->nby + 2);
        if (row == NULL) {
            Py_CLEAR(rows);
            break;
        }
        PyList_SET_ITEM(rows, left - 1, row);
        PyObject *tx = long_from_u128(e->count[0]), *rx = long_from_u128(e->count[1]);
        if (tx == NULL || rx == NULL || group_names(g, e, row, 0) == NULL) {
            Py_XDECREF(tx);
            Py_XDECREF(rx);
            Py_CLEAR(rows);
            break;
        }
        PyTuple_SET_ITEM(row, g->nby, tx);
        PyTuple_SET_ITEM(row, g->nby + 1, rx);
        top[0] += e->count[0];
        top[1] += e->count[1];
        heap[0] = heap[left - 1];
        sift_down(g, heap, left - 1, 0, order);
    }
    PyMem_Free(heap);
    if (rows == NULL) {
        return NULL;
    }
    PyObject *other = summary(g->len - n, total[0] - top[0], total[1] - top[1]);
    PyObject *all = summary(g->len, total[0], total[1]);
    PyObject *result = other != NULL && all != NULL ? PyTuple_Pack(3, rows, other, all) : NULL;
    Py_DECREF(rows);
    Py_XDECREF(other);
    Py_XDECREF(all);
    return result;
}

/* Read a group's names given from Python; 0, or -1 with an exception set. */
static int
read_key(const Groups *g, PyObject *key, KeyNames *out)
{
    if (!PyTuple_Check(key) || PyTuple_GET_SIZE(key) != g->nby) {
        PyErr_SetString(PyExc_TypeError, "each key is a tuple of the names grouped by");
        return -1;
    }
    uint32_t name_hash[3] = {0, 0, 0};
    *out = (KeyNames){{NULL, NULL, NULL}, {0, 0, 0}, 0};
    for (int j = 0; j < g->nby; j++) {
        PyObject *s = PyTuple_GET_ITEM(key, j);
        if (!PyUnicode_Check(s)) {
            PyErr_SetString(PyExc_TypeError, "names must be str");
            return -1;
        }
        Py_ssize_t len;
        const char *bytes = PyUnicode_AsUTF8AndSize(s, &len);
        if (bytes == NULL) {
            return -1;
        }
        if ((size_t)len > MAX_NAME_LENGTH) {
            PyErr_SetString(PyExc_ValueError, "name too long");
            return -1;
        }
        int f = g->by[j];
        out->name[f] = bytes;
        out->length[f] = (uint32_t)len;
        name_hash[f] = short_hash(hash_bytes(bytes, (size_t)len));
    }
    out->hash = group_hash(g, name_hash);
    return 0;
}

PyDoc_STRVAR(values_doc,
"values(keys) -> list of (bytes_tx, bytes_rx)\n\n"
"The sums of the given groups (tuples of names in the order grouped by); (0, 0) for a group\n"
"not seen.");

static PyObject *
Groups_values(Groups *g, PyObject *keys)
{
    if (check_groups_idle(g) < 0) {
        return NULL;
    }
    PyObject *seq = PySequence_Tuple(keys); /* a copy, as in Groups_new */
    if (seq == NULL) {
        return NULL;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(seq);
    PyObject *out = PyList_New(n);
    for (Py_ssize_t i = 0; out != NULL && i < n; i++) {
        KeyNames k;
        if (read_key(g, PyTuple_GET_ITEM(seq, i), &k) < 0) {
            Py_CLEAR(out);
            break;
        }
        const GroupEntry *e = groups_find(g, k.name, k.length, k.hash);
        PyObject *pair = summary(0, e ? e->count[0] : 0, e ? e->count[1] : 0);
        PyObject *value = pair != NULL ? PyTuple_GetSlice(pair, 1, 3) : NULL;
        Py_XDECREF(pair);
        if (value == NULL) {
            Py_CLEAR(out);
            break;
        }
        PyList_SET_ITEM(out, i, value);
    }
    Py_DECREF(seq);
    return out;
}

static PyObject *
Groups_get_total(Groups *g, void *Py_UNUSED(closure))
{
    if (check_groups_idle(g) < 0) {
        return NULL;
    }
    u128 total[2] = {g->rest[0], g->rest[1]};
    for (uint32_t i = 0; i < g->len; i++) {
        if (__builtin_add_overflow(total[0], g->entries[i].count[0], &total[0])
            || __builtin_add_overflow(total[1], g->entries[i].count[1], &total[1])) {
            PyErr_SetString(PyExc_OverflowError, "the total passed 2**128");
            return NULL;
        }
    }
    return summary(g->len, total[0], total[1]);
}

static PyObject *
Groups_get_rest(Groups *g, void *Py_UNUSED(closure))
{
    PyObject *t = long_from_u128(g->rest[0]), *r = long_from_u128(g->rest[1]);
    PyObject *result = t != NULL && r != NULL ? PyTuple_Pack(2, t, r) : NULL;
    Py_XDECREF(t);
    Py_XDECREF(r);
    return result;
}

static PyObject *
Groups_get_scanned(Groups *g, void *Py_UNUSED(closure))
{
    return PyLong_FromUnsignedLongLong(g->scanned);
}

static PyObject *
Groups_get_by(Groups *g, void *Py_UNUSED(closure))
{
    PyObject *by = PyTuple_New(g->nby);
    for (int i = 0; by != NULL && i < g->nby; i++) {
        PyObject *name = PyUnicode_FromString(FIELD_NAMES[g->by[i]]);
        if (name == NULL) {
            Py_CLEAR(by);
            break;
        }
        PyTuple_SET_ITEM(by, i, name);
    }
    return by;
}

static Py_ssize_t
Groups_len(Groups *g)
{
    return g->len;
}

static PyMethodDef Groups_methods[] = {
    {"top", (PyCFunction)Groups_top, METH_VARARGS, top_doc},
    {"values", (PyCFunction)Groups_values, METH_O, values_doc},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Groups_getset[] = {
    {"total", (getter)Groups_get_total, NULL,
     "(groups, bytes_tx, bytes_rx) of every group (with fixed groups: groups given, and the sums"
     " of all rows scanned)",
     NULL},
    {"rest", (getter)Groups_get_rest, NULL,
     "(bytes_tx, bytes_rx) of the rows that matched none of the fixed groups", NULL},
    {"scanned", (getter)Groups_get_scanned, NULL, "rows looked at by scans", NULL},
    {"by", (getter)Groups_get_by, NULL, "the fields grouped by", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods Groups_as_sequence = {
    .sq_length = (lenfunc)Groups_len,
};

PyDoc_STRVAR(Groups_doc,
"Groups(by, keys=None)\n\n"
"Sums of flows per group, a group being the names of the fields in `by` (a tuple of\n"
"'src_app', 'dest_app', 'vpc_id'); filled by HourTables.scan. len() is the number of groups.\n"
"With `keys` (tuples of names), the groups are those and no others: rows of any other group\n"
"are summed in `rest`.");

PyTypeObject Groups_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "flowagg.store.table.Groups",
    .tp_basicsize = sizeof(Groups),
    .tp_dealloc = (destructor)Groups_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = Groups_doc,
    .tp_methods = Groups_methods,
    .tp_getset = Groups_getset,
    .tp_as_sequence = &Groups_as_sequence,
    .tp_new = Groups_new,
};
