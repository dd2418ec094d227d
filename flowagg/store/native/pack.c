/* Packs: a request's flows, split by partition and copied out of their Python objects.
 *
 * A request thread calls pack(flows, n) right after decoding its body. Each flow is read once,
 * while its objects are still in the cache, and its names' UTF-8 bytes and counters are copied
 * into the Pack of its partition (hour % n); the flow records can then be freed by the thread
 * that made them, in the order it made them. A drainer later merges a list of Packs without
 * touching a Python object (tables.c, batch_read_packs), so most of its work runs without the
 * GIL, and pymalloc's pools are not freed in a partition-strided order by several threads.
 *
 * Layout of one Pack: `items` (n fixed-size records: hour, counters, and per name an offset and
 * a length into `arena`) and `arena` (the names' bytes, one after another, never shared).
 * A Pack is immutable once made, so any thread holding a reference may read it without a lock.
 */

#include "table.h"

static PyObject *
Pack_new_empty(void)
{
    Pack *self = PyObject_New(Pack, &Pack_Type);
    if (self == NULL) {
        return NULL;
    }
    self->items = NULL;
    self->n = 0;
    self->arena = NULL;
    self->arena_len = 0;
    return (PyObject *)self;
}

static void
Pack_dealloc(Pack *self)
{
    PyMem_RawFree(self->items);
    PyMem_RawFree(self->arena);
    PyObject_Free(self);
}

static Py_ssize_t
Pack_length(Pack *self)
{
    return self->n;
}

static PyObject *
Pack_get_nbytes(Pack *self, void *Py_UNUSED(closure))
{
    return PyLong_FromSize_t(sizeof(Pack) + (size_t)self->n * sizeof(PackItem) + self->arena_len);
}

PyDoc_STRVAR(Pack_records_doc,
"records() -> list\n\n"
"Its flows as tuples (src_app, dest_app, vpc_id, bytes_tx, bytes_rx, hour), in request order:\n"
"for tests and debugging, not for the hot path.");

static PyObject *
Pack_records(Pack *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *list = PyList_New(self->n);
    if (list == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < self->n; i++) {
        const PackItem *item = &self->items[i];
        PyObject *record = PyTuple_New(6);
        if (record == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, record);
        for (int f = 0; f < 3; f++) {
            /* The bytes came from a str's UTF-8, so they decode. */
            PyObject *name = PyUnicode_DecodeUTF8(self->arena + item->offset[f], /* never NULL */
                                                  item->length[f], "surrogatepass");
            if (name == NULL) {
                Py_DECREF(list);
                return NULL;
            }
            PyTuple_SET_ITEM(record, f, name);
        }
        PyObject *values[3] = {
            PyLong_FromUnsignedLongLong(item->count[0]),
            PyLong_FromUnsignedLongLong(item->count[1]),
            PyLong_FromUnsignedLongLong(item->hour),
        };
        for (int v = 0; v < 3; v++) {
            if (values[v] == NULL) {
                for (int w = v + 1; w < 3; w++) {
                    Py_XDECREF(values[w]);
                }
                Py_DECREF(list);
                return NULL;
            }
            PyTuple_SET_ITEM(record, 3 + v, values[v]);
        }
    }
    return list;
}

static PyMethodDef Pack_methods[] = {
    {"records", (PyCFunction)Pack_records, METH_NOARGS, Pack_records_doc},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods Pack_as_sequence = {
    .sq_length = (lenfunc)Pack_length,
};

static PyObject *
Pack_get_name_bytes(Pack *self, void *Py_UNUSED(closure))
{
    return PyLong_FromSize_t(self->arena_len);
}

static PyGetSetDef Pack_getset[] = {
    {"nbytes", (getter)Pack_get_nbytes, NULL, "Bytes of memory the pack holds.", NULL},
    {"name_bytes", (getter)Pack_get_name_bytes, NULL, "Bytes of its flows' names, summed.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyDoc_STRVAR(Pack_doc,
"One partition's flows of a request, copied out of their records (made by pack()).\n\n"
"len() is the number of flows. Immutable; HourTables.merge and count_new take lists of them.");

PyTypeObject Pack_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "flowagg.store.table.Pack",
    .tp_basicsize = sizeof(Pack),
    .tp_dealloc = (destructor)Pack_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = Pack_doc,
    .tp_methods = Pack_methods,
    .tp_getset = Pack_getset,
    .tp_as_sequence = &Pack_as_sequence,
    /* no tp_new: made only by pack() */
};

/* -- pack() ----------------------------------------------------------------------------------- */

/* One partition of the request being packed. */
typedef struct {
    uint64_t index;     /* hour % n */
    Pack *pack;         /* a new reference, until moved into the dict */
    Py_ssize_t cap;     /* room in pack->items */
    size_t arena_cap;   /* room in pack->arena */
} Part;

static int
part_order(const void *a, const void *b)
{
    uint64_t x = ((const Part *)a)->index, y = ((const Part *)b)->index;
    return (x > y) - (x < y);
}

/* Parts found by a linear search up to this many; beyond, through a map over them. */
#define FEW_PARTS 8

/* The parts of a request being packed: dense, with a map over them once there are many. */
typedef struct {
    Part *parts;
    uint32_t n, cap;
    Slot *slots; /* NULL while n <= FEW_PARTS, then keyed by hash_hour(index) */
    uint32_t mask;
    uint32_t last; /* the part found last: flows of one request come in runs */
} Parts;

static void
parts_free(Parts *ps)
{
    for (uint32_t p = 0; p < ps->n; p++) {
        Py_XDECREF(ps->parts[p].pack);
    }
    PyMem_RawFree(ps->parts);
    PyMem_RawFree(ps->slots);
}

/* The number of the part of partition `index`, added if new; -1 without memory. Inlined: it
 * runs for every flow. */
static inline __attribute__((always_inline)) int64_t
part_of(Parts *ps, uint64_t index)
{
    if (ps->last < ps->n && ps->parts[ps->last].index == index) {
        return ps->last;
    }
    uint32_t hash = short_hash(hash_hour(index));
    if (ps->slots == NULL) {
        for (uint32_t p = 0; p < ps->n; p++) {
            if (ps->parts[p].index == index) {
                return ps->last = p;
            }
        }
    }
    else {
        for (uint32_t s = hash & ps->mask; ps->slots[s].index != SLOT_NONE;
             s = (s + 1) & ps->mask) {
            if (ps->slots[s].hash == hash && ps->parts[ps->slots[s].index - 1].index == index) {
                return ps->last = ps->slots[s].index - 1;
            }
        }
    }
    if (ps->n == ps->cap) {
        uint64_t more = grown(ps->cap, (uint64_t)ps->cap + 1);
        Part *parts = PyMem_RawRealloc(ps->parts, more * sizeof(Part));
        if (parts == NULL) {
            return -1;
        }
        ps->parts = parts;
        ps->cap = (uint32_t)more;
    }
    uint32_t p = ps->n++;
    ps->parts[p] = (Part){.index = index};
    if (ps->n > FEW_PARTS && (ps->slots == NULL || (uint64_t)ps->n > ((uint64_t)ps->mask + 1) * 3 / 4)) {
        uint64_t size = slots_for((uint64_t)ps->n * 2);
        Slot *map = PyMem_RawCalloc(size, sizeof(Slot));
        if (map == NULL) {
            ps->n--;
            return -1;
        }
        for (uint32_t i = 0; i < ps->n; i++) {
            slot_put(map, (uint32_t)(size - 1), i, short_hash(hash_hour(ps->parts[i].index)));
        }
        PyMem_RawFree(ps->slots);
        ps->slots = map;
        ps->mask = (uint32_t)(size - 1);
    }
    else if (ps->slots != NULL) {
        slot_put(ps->slots, ps->mask, p, hash);
    }
    return ps->last = p;
}

/* Append `item` to `part`'s pack, growing it by half when full; -1 without memory, -2 for a
 * part of more than 4 GiB of names, which 32-bit offsets cannot address (a request body is far
 * smaller under any sensible FLOWAGG_MAX_BODY_BYTES). No exception set. */
static int
part_append(Part *part, const Item *item, Py_ssize_t hint)
{
    Pack *pack = part->pack;
    if (pack->n == part->cap) {
        uint64_t cap = grown((uint64_t)part->cap, (uint64_t)(part->cap > 0 ? part->cap + 1 : hint));
        PackItem *items = PyMem_RawRealloc(pack->items, cap * sizeof(PackItem));
        if (items == NULL) {
            return -1;
        }
        pack->items = items;
        part->cap = (Py_ssize_t)cap;
    }
    size_t bytes = (size_t)item->key.length[0] + item->key.length[1] + item->key.length[2];
    if (pack->arena == NULL || pack->arena_len + bytes > part->arena_cap) {
        size_t need = pack->arena_len + bytes;
        if (need > UINT32_MAX) {
            return -2;
        }
        /* Doubled from what the part holds (first: room for 256 flows like this one), never
         * sized from the request's length: one long name followed by many short ones must
         * not reserve long names for all. */
        size_t cap = part->arena_cap > 0 ? 2 * part->arena_cap : 256 * bytes;
        cap = cap < need ? need : cap;
        cap = cap < 1024 ? 1024 : cap;
        cap = cap > UINT32_MAX ? need : cap;
        char *arena = PyMem_RawRealloc(pack->arena, cap);
        if (arena == NULL) {
            return -1;
        }
        pack->arena = arena;
        part->arena_cap = cap;
    }
    PackItem *out = &pack->items[pack->n++];
    out->hour = item->hour;
    out->count[0] = (uint64_t)item->count[0]; /* a flow's counters are below 2**64 */
    out->count[1] = (uint64_t)item->count[1];
    for (int f = 0; f < 3; f++) {
        out->offset[f] = (uint32_t)pack->arena_len;
        out->length[f] = item->key.length[f];
        if (item->key.length[f] > 0) {
            memcpy(pack->arena + pack->arena_len, item->key.name[f], item->key.length[f]);
        }
        pack->arena_len += item->key.length[f];
    }
    return 0;
}

/* Take the packs of `into` (an earlier pack() of the same request) as parts to extend. Each
 * must be a Pack of partition index % n that nobody else holds: extending a pack another
 * thread may read (a ring buffer, a drainer) would race it. -1 with an exception set. */
static int
parts_adopt(Parts *ps, PyObject *into, unsigned long long n)
{
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    while (PyDict_Next(into, &pos, &key, &value)) {
        uint64_t index;
        if (as_u64(key, "a partition index", &index) < 0) {
            return -1;
        }
        if (!Pack_Check(value) || index >= n) {
            PyErr_SetString(PyExc_TypeError, "into must map partition indexes to Packs");
            return -1;
        }
        if (Py_REFCNT(value) != 1) {
            PyErr_SetString(PyExc_RuntimeError,
                            "a Pack of `into` is held elsewhere: only a pack nobody else holds"
                            " may be extended");
            return -1;
        }
        int64_t p = part_of(ps, index);
        if (p < 0) {
            PyErr_NoMemory();
            return -1;
        }
        Part *part = &ps->parts[p];
        if (part->pack != NULL) {
            PyErr_SetString(PyExc_ValueError, "into holds a partition twice");
            return -1;
        }
        Pack *pack = (Pack *)value;
        part->pack = (Pack *)Py_NewRef(value);
        part->cap = pack->n; /* packs are trimmed: exactly full */
        part->arena_cap = pack->arena != NULL ? pack->arena_len : 0;
    }
    return 0;
}

PyDoc_STRVAR(pack_doc,
"pack(flows, n, into=None) -> dict\n\n"
"Split a list of flow records by partition (hour % n) and copy each part into a Pack:\n"
"{index: Pack}, in ascending index order, each Pack's flows in request order. Raises like\n"
"HourTables.merge for a field of the wrong type; nothing is kept then. With `into`, the dict\n"
"an earlier pack() of the same request returned (a large body packed a slice at a time), its\n"
"packs are extended and returned with the new ones; they must be held by nobody else, and\n"
"are spoilt if it raises.");

static PyObject *
table_pack(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *flows, *into = Py_None;
    unsigned long long n;
    if (!PyArg_ParseTuple(args, "O!K|O:pack", &PyList_Type, &flows, &n, &into)) {
        return NULL;
    }
    if (n < 1) {
        PyErr_SetString(PyExc_ValueError, "n must be at least 1");
        return NULL;
    }
    if (into != Py_None && !PyDict_CheckExact(into)) {
        PyErr_SetString(PyExc_TypeError, "into must be None or a dict that pack() returned");
        return NULL;
    }
    Py_ssize_t count = PyList_GET_SIZE(flows);
    PyObject *result = PyDict_New();
    if (result == NULL) {
        return NULL;
    }
    Parts ps = {0};
    Layout layout = {0};
    if (into != Py_None && parts_adopt(&ps, into, n) < 0) {
        goto error;
    }
    /* One pass, in request order: read each flow (its names borrowed from the record, which
     * the list keeps alive; only an unusual record type read by getattr holds references, for
     * the time of its copy) and append it to its partition's pack. */
    for (Py_ssize_t i = 0; i < count; i++) {
        Item item;
        item_init(&item);
        PyObject *flow = PyList_GET_ITEM(flows, i);
        int viewed = view_flow(flow, &layout, &item);
        if (viewed < 0) {
            goto error;
        }
        if (viewed == 0) {
            Py_INCREF(flow); /* getattr runs Python code, which could shrink the list */
            int failed = read_flow(flow, &layout, &item);
            Py_DECREF(flow);
            if (failed || PyList_GET_SIZE(flows) != count) {
                items_release(&item, 1);
                if (!failed) {
                    PyErr_SetString(PyExc_RuntimeError, "flows changed size during pack()");
                }
                goto error;
            }
        }
        int64_t p = part_of(&ps, item.hour % n);
        Part *part = p >= 0 ? &ps.parts[p] : NULL;
        if (part != NULL && part->pack == NULL) {
            part->pack = (Pack *)Pack_new_empty();
            if (part->pack == NULL) {
                items_release(&item, viewed == 0);
                goto error;
            }
        }
        /* The first part is sized for the whole rest of the request (the usual one-hour
         * batch), the others for their share of it so far; all are trimmed at the end. */
        Py_ssize_t hint = ps.n == 1 ? count - i : (count - i) / ps.n + 16;
        int status = part == NULL ? -1 : part_append(part, &item, hint);
        items_release(&item, viewed == 0);
        if (status == -2) {
            PyErr_SetString(PyExc_ValueError, "a request holds more than 4 GiB of names");
            goto error;
        }
        if (status < 0) {
            PyErr_NoMemory();
            goto error;
        }
    }
    /* The map is stale once sorted: not used after this point. */
    if (ps.n > 1) { /* no parts (no flows): no array to sort */
        qsort(ps.parts, ps.n, sizeof(Part), part_order);
    }
    for (uint32_t p = 0; p < ps.n; p++) {
        Pack *pack = ps.parts[p].pack;
        /* Give back the room never used: a pack may wait in a ring buffer for a while. */
        if (ps.parts[p].cap > pack->n) {
            PackItem *items = PyMem_RawRealloc(pack->items, pack->n * sizeof(PackItem));
            pack->items = items != NULL ? items : pack->items;
        }
        if (ps.parts[p].arena_cap > pack->arena_len && pack->arena_len > 0) {
            char *arena = PyMem_RawRealloc(pack->arena, pack->arena_len);
            pack->arena = arena != NULL ? arena : pack->arena;
        }
        PyObject *key = PyLong_FromUnsignedLongLong(ps.parts[p].index);
        int failed = key == NULL || PyDict_SetItem(result, key, (PyObject *)pack) < 0;
        Py_XDECREF(key);
        if (failed) {
            goto error;
        }
    }
    parts_free(&ps); /* the dict holds the packs */
    return result;
error:
    parts_free(&ps);
    Py_DECREF(result);
    return NULL;
}

PyMethodDef pack_functions[] = {
    {"pack", table_pack, METH_VARARGS, pack_doc},
    {NULL, NULL, 0, NULL},
};
