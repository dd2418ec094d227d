/* Reading flow records and snapshot rows into Items for a merge, and the batch helpers that
 * look at every record of a request (split by partition, hour bounds). One call per batch from
 * Python; the fields are read straight from their slots where the type has them. */

#include "table.h"

#include <structmember.h>

const char *const FIELD_NAMES[N_FIELDS] = {
    "src_app", "dest_app", "vpc_id", "bytes_tx", "bytes_rx", "hour",
};
static PyObject *field_names[N_FIELDS]; /* interned, created at import, never released */

#define LAYOUTS 4
static Layout layouts[LAYOUTS]; /* filled on first sight of a type; replaced round robin */
static int next_layout;

/* The layout of `type`, copied into `out` (the cache entry may be replaced later). */
static void
layout_of(PyTypeObject *type, Layout *out)
{
    for (int i = 0; i < LAYOUTS; i++) {
        if (layouts[i].type == type && layouts[i].version == type->tp_version_tag
            && (type->tp_flags & Py_TPFLAGS_VALID_VERSION_TAG)) {
            *out = layouts[i];
            return;
        }
    }
    Layout found = {.type = type, .version = type->tp_version_tag, .all_slots = 1};
    for (int f = 0; f < N_FIELDS; f++) {
        found.offset[f] = -1;
        /* _PyType_Lookup (private) finds the attribute on the type and its bases without
         * running any Python code, which getattr on the type could (a metaclass); member
         * descriptors are read for the same reason: no public API gives a slot's offset. */
        PyObject *descr = _PyType_Lookup(type, field_names[f]); /* borrowed */
        if (descr != NULL && Py_IS_TYPE(descr, &PyMemberDescr_Type)) {
            PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
            PyTypeObject *owner = ((PyDescrObject *)descr)->d_type;
            /* A descriptor taken from another class and set on this one describes that
             * class's instances: its offset means nothing here (getattr refuses it). */
            if (member->type == T_OBJECT_EX && !(member->flags & READ_RESTRICTED)
                && owner != NULL && PyType_IsSubtype(type, owner) && member->offset >= 0
                && (size_t)member->offset + sizeof(PyObject *) <= (size_t)owner->tp_basicsize) {
                found.offset[f] = member->offset;
            }
        }
        found.all_slots &= found.offset[f] >= 0;
    }
    Layout *slot = &layouts[next_layout];
    next_layout = (next_layout + 1) % LAYOUTS;
    PyTypeObject *old = slot->type;
    Py_INCREF(type);
    *slot = found;
    Py_XDECREF(old); /* last: releasing a type may run arbitrary code */
    *out = found;
}

/* The layout of `flow`'s type, reusing `current` while the type stays the same. */
static inline Layout *
layout_for(PyObject *flow, Layout *current)
{
    PyTypeObject *type = Py_TYPE(flow);
    if (current->type != type || current->version != type->tp_version_tag
        || !(type->tp_flags & Py_TPFLAGS_VALID_VERSION_TAG)) {
        layout_of(type, current);
    }
    return current;
}

/* A new reference to field `f` of `obj`, or NULL with an exception set. */
static inline PyObject *
read_field(PyObject *obj, const Layout *layout, int f)
{
    Py_ssize_t offset = layout->offset[f];
    if (offset < 0) {
        return PyObject_GetAttr(obj, field_names[f]);
    }
    PyObject *value = *(PyObject **)((char *)obj + offset);
    if (value == NULL) {
        PyErr_Format(PyExc_AttributeError, "flow record has no value for '%s'", FIELD_NAMES[f]);
        return NULL;
    }
    return Py_NewRef(value);
}

/* The value of an int of at most two digits that is not negative: 1, else 0. Reads the int's
 * digits (3.11: the struct itself; 3.12 on: the PyUnstable_ accessors) because this runs for
 * every counter of every flow, where PyLong_AsUnsignedLongLong's checks and error handling cost
 * about as much as the rest of reading the field. */
static inline int
small_u64(PyObject *value, uint64_t *out)
{
#if PY_VERSION_HEX >= 0x030C0000
    if (PyUnstable_Long_IsCompact((PyLongObject *)value)) {
        Py_ssize_t v = PyUnstable_Long_CompactValue((PyLongObject *)value);
        if (v >= 0) {
            *out = (uint64_t)v;
            return 1;
        }
    }
    return 0;
#else
    const digit *d = ((PyLongObject *)value)->ob_digit;
    switch (Py_SIZE(value)) {
        case 0: *out = 0; return 1;
        case 1: *out = d[0]; return 1;
        case 2: *out = d[0] | ((uint64_t)d[1] << PyLong_SHIFT); return 1;
        default: return 0;
    }
#endif
}

int
as_u64(PyObject *value, const char *what, uint64_t *out)
{
    if (!PyLong_Check(value)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int, not %.100s", what,
                     Py_TYPE(value)->tp_name);
        return -1;
    }
    if (small_u64(value, out)) {
        return 0;
    }
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (v == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (overflow == 0 && v >= 0) {
        *out = (uint64_t)v;
        return 0;
    }
    if (overflow > 0) {
        unsigned long long u = PyLong_AsUnsignedLongLong(value);
        if (u == (unsigned long long)-1 && PyErr_Occurred()) {
            PyErr_Format(PyExc_OverflowError, "%s must be below 2**64", what);
            return -1;
        }
        *out = u;
        return 0;
    }
    PyErr_Format(PyExc_ValueError, "%s must not be negative", what);
    return -1;
}

/* A counter below 2**128 (rows from a snapshot may hold sums of 64 bits or more). */
static int
as_u128(PyObject *value, const char *what, u128 *out)
{
    uint64_t low;
    if (as_u64(value, what, &low) == 0) {
        *out = low;
        return 0;
    }
    if (!PyErr_ExceptionMatches(PyExc_OverflowError)) {
        return -1;
    }
    PyErr_Clear();
    PyObject *shift = PyLong_FromLong(64);
    if (shift == NULL) {
        return -1;
    }
    PyObject *upper = PyNumber_Rshift(value, shift);
    Py_DECREF(shift);
    if (upper == NULL) {
        return -1;
    }
    unsigned long long high = PyLong_AsUnsignedLongLong(upper);
    Py_DECREF(upper);
    if (high == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Format(PyExc_OverflowError, "%s must be below 2**128", what);
        return -1;
    }
    *out = ((u128)high << 64) | PyLong_AsUnsignedLongLongMask(value);
    return 0;
}

/* A new int for a 128-bit counter. */
PyObject *
long_from_u128(u128 value)
{
    uint64_t high = (uint64_t)(value >> 64);
    if (high == 0) {
        return PyLong_FromUnsignedLongLong((uint64_t)value);
    }
    /* (high << 64) | low with the stable API: only sums past 2**64 come here, rarely. */
    PyObject *upper = PyLong_FromUnsignedLongLong(high);
    PyObject *shift = upper != NULL ? PyLong_FromLong(64) : NULL;
    PyObject *shifted = shift != NULL ? PyNumber_Lshift(upper, shift) : NULL;
    PyObject *lower = shifted != NULL ? PyLong_FromUnsignedLongLong((uint64_t)value) : NULL;
    PyObject *result = lower != NULL ? PyNumber_Or(shifted, lower) : NULL;
    Py_XDECREF(upper);
    Py_XDECREF(shift);
    Py_XDECREF(shifted);
    Py_XDECREF(lower);
    return result;
}

void
items_release(Item *items, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        for (int f = 0; f < 3; f++) {
            Py_XDECREF(items[i].str[f]);
        }
    }
}

/* Point `item`'s name `f` at the UTF-8 of `value` (borrowed: the caller keeps it alive). */
static int
view_name(Item *item, int f, PyObject *value)
{
    if (!PyUnicode_Check(value)) {
        PyErr_Format(PyExc_TypeError, "%s must be a str, not %.100s", FIELD_NAMES[f],
                     Py_TYPE(value)->tp_name);
        return -1;
    }
    Py_ssize_t length;
    const char *bytes;
    /* PyUnicode_IS_COMPACT_ASCII and the data after the header are CPython's (not the stable
     * ABI): for the ASCII names nearly all flows have, the characters are the UTF-8, read
     * without the call and the cache lookup PyUnicode_AsUTF8AndSize makes per name. */
    if (PyUnicode_IS_COMPACT_ASCII(value)) { /* its characters are its UTF-8 */
        bytes = (const char *)(((PyASCIIObject *)value) + 1);
        length = PyUnicode_GET_LENGTH(value);
    }
    else if ((bytes = PyUnicode_AsUTF8AndSize(value, &length)) == NULL) {
        return -1; /* the UTF-8 is cached in the string, so it lives as long as the string */
    }
    if ((size_t)length > MAX_NAME_LENGTH) {
        PyErr_Format(PyExc_ValueError, "%s is too long", FIELD_NAMES[f]);
        return -1;
    }
    item->key.name[f] = bytes;
    item->key.length[f] = (uint32_t)length;
    return 0;
}

/* Fill `item` from a name string: keeps the reference it is given, points at its UTF-8. */
static int
take_name(Item *item, int f, PyObject *value)
{
    if (!PyUnicode_Check(value)) {
        int failed = view_name(item, f, value); /* raises the TypeError */
        Py_DECREF(value);
        return failed;
    }
    item->str[f] = value; /* owned by the item from here on, released by items_release */
    return view_name(item, f, value);
}

/* Read a counter or the hour field of a flow into `item`. */
static inline int
read_u64_field(int f, PyObject *value, Item *item)
{
    if (f == F_HOUR) {
        return as_u64(value, FIELD_NAMES[f], &item->hour);
    }
    uint64_t count;
    if (as_u64(value, FIELD_NAMES[f], &count) < 0) {
        return -1;
    }
    item->count[f - F_TX] = count;
    return 0;
}

int
view_flow(PyObject *flow, Layout *current, Item *item)
{
    const Layout *layout = layout_for(flow, current);
    if (!layout->all_slots) {
        return 0;
    }
    for (int f = 0; f < N_FIELDS; f++) {
        PyObject *value = *(PyObject **)((char *)flow + layout->offset[f]); /* borrowed */
        if (value == NULL) {
            PyErr_Format(PyExc_AttributeError, "flow record has no value for '%s'",
                         FIELD_NAMES[f]);
            return -1;
        }
        if (f <= F_VPC ? view_name(item, f, value) : read_u64_field(f, value, item)) {
            return -1;
        }
    }
    return 1;
}

/* Fill `item` from a flow record laid out as `layout` (a copy: the cache may change while
 * getattr runs Python code). */
int
read_flow(PyObject *flow, Layout *current, Item *item)
{
    const Layout *layout = layout_for(flow, current);
    for (int f = F_SRC; f <= F_VPC; f++) {
        PyObject *value = read_field(flow, layout, f);
        if (value == NULL || take_name(item, f, value) < 0) {
            return -1;
        }
    }
    for (int f = F_TX; f <= F_HOUR; f++) {
        PyObject *value = read_field(flow, layout, f);
        if (value == NULL) {
            return -1;
        }
        int failed = read_u64_field(f, value, item);
        Py_DECREF(value);
        if (failed) {
            return -1;
        }
    }
    return 0;
}

/* A row (src_app, dest_app, vpc_id, bytes_tx, bytes_rx) of `hour`. */
int
read_row(PyObject *row, uint64_t hour, Item *item)
{
    if (!PyTuple_Check(row) || PyTuple_GET_SIZE(row) != 5) {
        PyErr_SetString(PyExc_TypeError,
                        "a row is a tuple (src_app, dest_app, vpc_id, bytes_tx, bytes_rx)");
        return -1;
    }
    for (int f = F_SRC; f <= F_VPC; f++) {
        if (take_name(item, f, Py_NewRef(PyTuple_GET_ITEM(row, f))) < 0) {
            return -1;
        }
    }
    for (int c = 0; c < 2; c++) {
        if (as_u128(PyTuple_GET_ITEM(row, 3 + c), FIELD_NAMES[F_TX + c], &item->count[c]) < 0) {
            return -1;
        }
    }
    item->hour = hour;
    return 0;
}

/* -- batch helpers ---------------------------------------------------------------------------- */

/* The hour of flow record `i` of the list `flows`, which held `count` records when the caller
 * began. Reading a field by getattr runs Python code, which could change the list: the record
 * is held meanwhile, and a list that changed size is a RuntimeError. */
static int
flow_hour(PyObject *flows, Py_ssize_t i, Py_ssize_t count, Layout *layout, uint64_t *hour)
{
    if (PyList_GET_SIZE(flows) != count) {
        PyErr_SetString(PyExc_RuntimeError, "flows changed size while being read");
        return -1;
    }
    PyObject *flow = Py_NewRef(PyList_GET_ITEM(flows, i));
    PyObject *value = read_field(flow, layout_for(flow, layout), F_HOUR);
    int failed = value == NULL || as_u64(value, FIELD_NAMES[F_HOUR], hour) < 0;
    Py_XDECREF(value);
    Py_DECREF(flow);
    if (!failed && PyList_GET_SIZE(flows) != count) {
        PyErr_SetString(PyExc_RuntimeError, "flows changed size while being read");
        return -1;
    }
    return failed ? -1 : 0;
}

/* Add `flow` to the list of `parts` under partition `index`, creating the list if new. */
static int
append_part(PyObject *parts, Py_ssize_t index, PyObject *flow)
{
    PyObject *key = PyLong_FromSsize_t(index);
    if (key == NULL) {
        return -1;
    }
    PyObject *part = PyDict_GetItemWithError(parts, key); /* borrowed */
    if (part == NULL) {
        if (PyErr_Occurred() || (part = PyList_New(0)) == NULL) {
            Py_DECREF(key);
            return -1;
        }
        int failed = PyDict_SetItem(parts, key, part);
        Py_DECREF(part); /* the dict holds it, if set */
        if (failed) {
            Py_DECREF(key);
            return -1;
        }
    }
    Py_DECREF(key);
    return PyList_Append(part, flow);
}

/* Partition counts up to this split through arrays indexed by partition; larger ones (an
 * unusual setting) through a dict per flow. */
#define SPLIT_ARRAY_MAX 65536

PyDoc_STRVAR(split_doc,
"split(flows, n) -> dict\n\n"
"Group a list of flow records by partition (hour % n): {index: [flows in request order]},\n"
"in ascending index order. A batch that falls into one partition maps to the list itself.");

static PyObject *split_list(PyObject *flows, Py_ssize_t n, PyObject *given);

static PyObject *
table_split(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *given;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "O!n:split", &PyList_Type, &given, &n)) {
        return NULL;
    }
    if (n < 1) {
        PyErr_SetString(PyExc_ValueError, "n must be at least 1");
        return NULL;
    }
    /* Python code may run below (getattr, a garbage collection's finalisers) and change the
     * list: the records are read from a copy of it. */
    PyObject *copy = PyList_GetSlice(given, 0, PyList_GET_SIZE(given));
    if (copy == NULL) {
        return NULL;
    }
    PyObject *result = split_list(copy, n, given);
    Py_DECREF(copy);
    return result;
}

/* split() of `flows`, a copy of the list `given`, which is the answer for one partition. */
static PyObject *
split_list(PyObject *flows, Py_ssize_t n, PyObject *given)
{
    Py_ssize_t count = PyList_GET_SIZE(flows);
    PyObject *parts = PyDict_New();
    if (parts == NULL || count == 0) {
        return parts;
    }
    Py_ssize_t *index = PyMem_Malloc(sizeof(Py_ssize_t) * count); /* partition of each flow */
    Py_ssize_t *sizes = NULL;  /* per partition: flows, then the next position to fill */
    PyObject **lists = NULL;   /* per partition: a new list or NULL, until moved into parts */
    if (index == NULL) {
        PyErr_NoMemory();
        goto error;
    }
    Layout layout = {0};
    int one = 1;
    for (Py_ssize_t i = 0; i < count; i++) {
        uint64_t hour;
        if (flow_hour(flows, i, count, &layout, &hour) < 0) {
            goto error;
        }
        index[i] = (Py_ssize_t)(hour % (uint64_t)n);
        one &= index[i] == index[0];
    }
    if (one) {
        PyObject *key = PyLong_FromSsize_t(index[0]);
        int failed = key == NULL || PyDict_SetItem(parts, key, given) < 0;
        Py_XDECREF(key);
        if (failed) {
            goto error;
        }
    }
    else if (n > SPLIT_ARRAY_MAX) {
        for (Py_ssize_t i = 0; i < count; i++) {
            if (append_part(parts, index[i], PyList_GET_ITEM(flows, i)) < 0) {
                goto error;
            }
        }
    }
    else {
        sizes = PyMem_Calloc(n, sizeof(Py_ssize_t));
        lists = PyMem_Calloc(n, sizeof(PyObject *));
        if (sizes == NULL || lists == NULL) {
            PyErr_NoMemory();
            goto error;
        }
        for (Py_ssize_t i = 0; i < count; i++) {
            sizes[index[i]]++;
        }
        for (Py_ssize_t p = 0; p < n; p++) {
            if (sizes[p] > 0 && (lists[p] = PyList_New(sizes[p])) == NULL) {
                goto error;
            }
            sizes[p] = 0;
        }
        for (Py_ssize_t i = 0; i < count; i++) {
            PyList_SET_ITEM(lists[index[i]], sizes[index[i]]++,
                            Py_NewRef(PyList_GET_ITEM(flows, i)));
        }
        for (Py_ssize_t p = 0; p < n; p++) {
            if (lists[p] == NULL) {
                continue;
            }
            PyObject *key = PyLong_FromSsize_t(p);
            int failed = key == NULL || PyDict_SetItem(parts, key, lists[p]) < 0;
            Py_XDECREF(key);
            if (failed) {
                goto error;
            }
        }
    }
    if (lists != NULL) {
        for (Py_ssize_t p = 0; p < n; p++) {
            Py_XDECREF(lists[p]); /* parts holds them */
        }
    }
    PyMem_Free(lists);
    PyMem_Free(sizes);
    PyMem_Free(index);
    return parts;
error:
    if (lists != NULL) {
        for (Py_ssize_t p = 0; p < n; p++) {
            Py_XDECREF(lists[p]);
        }
    }
    PyMem_Free(lists);
    PyMem_Free(sizes);
    PyMem_Free(index);
    Py_DECREF(parts);
    return NULL;
}

PyDoc_STRVAR(hour_bounds_doc,
"hour_bounds(flows) -> (lowest, highest) hour of a list of flow records, or None if empty");

static PyObject *
table_hour_bounds(PyObject *Py_UNUSED(module), PyObject *flows)
{
    if (!PyList_Check(flows)) {
        PyErr_SetString(PyExc_TypeError, "flows must be a list");
        return NULL;
    }
    Py_ssize_t count = PyList_GET_SIZE(flows);
    if (count == 0) {
        Py_RETURN_NONE;
    }
    uint64_t low = U64_MAX, high = 0;
    Layout layout = {0};
    for (Py_ssize_t i = 0; i < count; i++) {
        uint64_t hour;
        if (flow_hour(flows, i, count, &layout, &hour) < 0) {
            return NULL;
        }
        low = hour < low ? hour : low;
        high = hour > high ? hour : high;
    }
    return Py_BuildValue("KK", (unsigned long long)low, (unsigned long long)high);
}

PyDoc_STRVAR(first_outside_doc,
"first_outside(flows, low, high) -> index\n\n"
"The index of the first flow record whose hour is not in [low, high], or -1.");

static PyObject *
table_first_outside(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *flows;
    long long low, high;
    if (!PyArg_ParseTuple(args, "O!LL:first_outside", &PyList_Type, &flows, &low, &high)) {
        return NULL;
    }
    Py_ssize_t count = PyList_GET_SIZE(flows);
    Layout layout = {0};
    for (Py_ssize_t i = 0; i < count; i++) {
        uint64_t hour;
        if (flow_hour(flows, i, count, &layout, &hour) < 0) {
            return NULL;
        }
        if ((low > 0 && hour < (uint64_t)low) || high < 0 || hour > (uint64_t)high) {
            return PyLong_FromSsize_t(i);
        }
    }
    return PyLong_FromLong(-1);
}

PyDoc_STRVAR(first_long_name_doc,
"first_long_name(flows, limit) -> (index, field) or None\n\n"
"The first flow record with a name longer than `limit` bytes of UTF-8, and that name's field.");

static PyObject *
table_first_long_name(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *flows;
    Py_ssize_t limit;
    if (!PyArg_ParseTuple(args, "O!n:first_long_name", &PyList_Type, &flows, &limit)) {
        return NULL;
    }
    Py_ssize_t count = PyList_GET_SIZE(flows);
    Layout layout = {0};
    for (Py_ssize_t i = 0; i < count; i++) {
        if (PyList_GET_SIZE(flows) != count) { /* getattr ran Python code that changed it */
            PyErr_SetString(PyExc_RuntimeError, "flows changed size while being read");
            return NULL;
        }
        /* Held while read: getattr runs Python code, which could drop it from the list. */
        PyObject *flow = Py_NewRef(PyList_GET_ITEM(flows, i));
        Layout l = *layout_for(flow, &layout); /* a copy: getattr may replace the cache */
        PyObject *found = NULL;
        int failed = 0;
        for (int f = F_SRC; f <= F_VPC && !failed && found == NULL; f++) {
            PyObject *name = read_field(flow, &l, f);
            Py_ssize_t length = -1;
            if (name == NULL) {
                failed = 1;
                break;
            }
            if (!PyUnicode_Check(name)) {
                PyErr_Format(PyExc_TypeError, "%s must be a str", FIELD_NAMES[f]);
            }
            else if (PyUnicode_IS_COMPACT_ASCII(name)) {
                length = PyUnicode_GET_LENGTH(name);
            }
            else if (PyUnicode_AsUTF8AndSize(name, &length) == NULL) {
                length = -1;
            }
            Py_DECREF(name);
            if (length < 0) {
                failed = 1;
            }
            else if (length > limit) {
                found = Py_BuildValue("ns", i, FIELD_NAMES[f]);
                failed = found == NULL;
            }
        }
        Py_DECREF(flow);
        if (failed || found != NULL) {
            return found;
        }
    }
    Py_RETURN_NONE;
}

PyMethodDef records_functions[] = {
    {"split", table_split, METH_VARARGS, split_doc},
    {"hour_bounds", table_hour_bounds, METH_O, hour_bounds_doc},
    {"first_outside", table_first_outside, METH_VARARGS, first_outside_doc},
    {"first_long_name", table_first_long_name, METH_VARARGS, first_long_name_doc},
    {NULL, NULL, 0, NULL},
};

int
records_init(void)
{
    for (int f = 0; f < N_FIELDS; f++) {
        if (field_names[f] == NULL) {
            field_names[f] = PyUnicode_InternFromString(FIELD_NAMES[f]);
            if (field_names[f] == NULL) {
                return -1;
            }
        }
    }
    return 0;
}

/* -- slicing a large JSON array ------------------------------------------------------------- */

PyDoc_STRVAR(array_slices_doc,
"array_slices(body, max_bytes, max_items) -> list of (start, end, items) or None\n\n"
"Where a JSON array can be cut between its elements into slices of at most `max_items`\n"
"elements, each at most `max_bytes` long unless one element alone is longer: for each slice,\n"
"the offsets of its first element's first byte and of the byte after its last element, and\n"
"how many elements it holds. Strings (with their escapes) and nesting are followed, nothing\n"
"else is checked: each slice is decoded and validated on its own afterwards. None if the body\n"
"is not an array as far as this can tell (the caller then decodes it whole, which words the\n"
"error). Releases the GIL while it scans.");

typedef struct {
    Py_ssize_t start, end, items;
} ArraySlice;

/* Scan `p[0:n]`; a STEP_ status, or 1 if it is not an array. */
static int
scan_array(const unsigned char *p, Py_ssize_t n, Py_ssize_t max_bytes, Py_ssize_t max_items,
           ArraySlice **out, Py_ssize_t *count)
{
    Py_ssize_t i = 0, cap = 0;
    *out = NULL;
    *count = 0;
    while (i < n && (p[i] == ' ' || p[i] == '\t' || p[i] == '\n' || p[i] == '\r')) {
        i++;
    }
    if (i == n || p[i] != '[') {
        return 1;
    }
    i++;
    int depth = 1, in_string = 0, any = 0;
    ArraySlice current = {.start = -1};
    Py_ssize_t element = -1; /* start of the element being read, -1 between elements */
    for (; i < n && depth > 0; i++) {
        unsigned char c = p[i];
        if (in_string) {
            if (c == '\\') {
                i++;
            }
            else if (c == '"') {
                in_string = 0;
            }
            continue;
        }
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
            continue;
        }
        if (depth == 1 && (c == ',' || c == ']')) {
            if (element >= 0) {
                current.items++;
                current.end = i; /* trailing spaces are harmless inside a slice */
                element = -1;
                any = 1;
                if (current.items >= max_items || current.end - current.start >= max_bytes
                    || c == ']') {
                    if (*count == cap) {
                        Py_ssize_t more = cap < 16 ? 16 : cap * 2;
                        ArraySlice *grown_out = PyMem_RawRealloc(*out, more * sizeof(ArraySlice));
                        if (grown_out == NULL) {
                            return STEP_NO_MEMORY;
                        }
                        *out = grown_out;
                        cap = more;
                    }
                    (*out)[(*count)++] = current;
                    current = (ArraySlice){.start = -1};
                }
            }
            else if (c == ',' || any) { /* ",," or "[,", or "1,]": not an array we can cut */
                return 1;
            }
            if (c == ']') {
                depth = 0;
            }
            continue;
        }
        if (element < 0) {
            element = i;
            if (current.start < 0) {
                current.start = i;
            }
        }
        if (c == '"') {
            in_string = 1;
        }
        else if (c == '[' || c == '{') {
            depth++;
        }
        else if (c == ']' || c == '}') {
            depth--;
        }
    }
    if (depth != 0 || current.start >= 0) {
        return 1;
    }
    for (; i < n; i++) {
        if (p[i] != ' ' && p[i] != '\t' && p[i] != '\n' && p[i] != '\r') {
            return 1;
        }
    }
    return STEP_OK;
}

static PyObject *
table_array_slices(PyObject *Py_UNUSED(module), PyObject *args)
{
    Py_buffer body;
    Py_ssize_t max_bytes, max_items;
    if (!PyArg_ParseTuple(args, "y*nn:array_slices", &body, &max_bytes, &max_items)) {
        return NULL;
    }
    if (max_bytes < 1 || max_items < 1) {
        PyBuffer_Release(&body);
        PyErr_SetString(PyExc_ValueError, "max_bytes and max_items must be at least 1");
        return NULL;
    }
    ArraySlice *slices;
    Py_ssize_t count;
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = scan_array(body.buf, body.len, max_bytes, max_items, &slices, &count);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&body);
    if (status == 1) {
        PyMem_RawFree(slices);
        Py_RETURN_NONE;
    }
    if (status != STEP_OK) {
        PyMem_RawFree(slices);
        return PyErr_NoMemory();
    }
    PyObject *list = PyList_New(count);
    for (Py_ssize_t s = 0; list != NULL && s < count; s++) {
        PyObject *item = Py_BuildValue("nnn", slices[s].start, slices[s].end, slices[s].items);
        if (item == NULL) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, s, item);
    }
    PyMem_RawFree(slices);
    return list;
}

PyMethodDef slicing_functions[] = {
    {"array_slices", table_array_slices, METH_VARARGS, array_slices_doc},
    {NULL, NULL, 0, NULL},
};
