/* Packed rows, the Redis store's unit of storage (flowagg/store/redis/layout.py): an hour's rows
 * of an HourTables split into per-bucket blobs (HourTables.pack_buckets), and Sums, which adds
 * blobs up exactly and answers them as rows, JSON or blobs sorted by their names.
 *
 * A blob is a magic byte then rows, every number a LEB128 varint (7 bits a byte, low first):
 *
 *     blob  := 0xF2 row*
 *     row   := name name name count count      src_app, dest_app, vpc_id; bytes_tx, bytes_rx
 *     name  := varint(n) n bytes of UTF-8
 *     count := varint, below 2**128 (at most 19 bytes)
 *
 * A row's bucket is crc32 (zlib's) of its three names as written (lengths included) modulo the
 * number of buckets, so every instance puts a key in the same bucket. Sums keeps its rows in an
 * Hour (hour.c), so counters are exact to 2**128 and the JSON is the one GET /flows answers. */

#include "table.h"

#define PACKED_MAGIC 0xF2
#define MAX_VARINT 19 /* bytes of a varint below 2**128 */

/* -- varints and crc32 -------------------------------------------------------------------------- */

static size_t
put_varint(unsigned char *out, u128 v)
{
    size_t n = 0;
    while (v >= 0x80) {
        out[n++] = (unsigned char)(v | 0x80);
        v >>= 7;
    }
    out[n++] = (unsigned char)v;
    return n;
}

/* Read a varint at *at (below end); 0 and *at moved past it, or -1 if cut short or >= 2**128. */
static int
get_varint(const unsigned char **at, const unsigned char *end, u128 *out)
{
    const unsigned char *p = *at;
    u128 v = 0;
    for (int shift = 0; p < end; shift += 7) {
        unsigned char b = *p++;
        if (shift == 126 && (b & 0x7f) > 3) {
            return -1; /* beyond 128 bits */
        }
        v |= (u128)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *at = p;
            *out = v;
            return 0;
        }
        if (shift == 126) {
            return -1;
        }
    }
    return -1;
}

static uint32_t crc_table[256]; /* zlib's crc32, filled on first use (with the GIL held) */

static void
crc_init(void)
{
    if (crc_table[1] != 0) {
        return;
    }
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) {
            c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        }
        crc_table[i] = c;
    }
}

static uint32_t
crc_update(uint32_t crc, const unsigned char *p, size_t n)
{
    while (n--) {
        crc = crc_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
    }
    return crc;
}

/* -- growable byte buffers ---------------------------------------------------------------------- */

typedef struct {
    unsigned char *data; /* owned (PyMem_Raw), len used of cap; starts with the magic byte */
    size_t len, cap;
    uint32_t rows;
} Buf;

static int
buf_room(Buf *b, size_t more)
{
    if (b->len + more <= b->cap) {
        return 0;
    }
    size_t cap = b->cap < 256 ? 256 : b->cap;
    while (cap < b->len + more) {
        cap *= 2;
    }
    unsigned char *data = PyMem_RawRealloc(b->data, cap);
    if (data == NULL) {
        return -1;
    }
    b->data = data;
    b->cap = cap;
    return 0;
}

/* Append (bucket, rows, blob) of the chunk held so far to `list`, and empty the buffer (its
 * magic byte kept). */
static int
buf_emit(Buf *b, Py_ssize_t bucket, PyObject *list)
{
    PyObject *item = Py_BuildValue("(nIy#)", bucket, b->rows, (const char *)b->data,
                                   (Py_ssize_t)b->len);
    if (item == NULL || PyList_Append(list, item) < 0) {
        Py_XDECREF(item);
        return -1;
    }
    Py_DECREF(item);
    b->len = 1;
    b->rows = 0;
    return 0;
}

/* Bytes of a row's names once written: three lengths and the names. */
static size_t
names_size(const Hour *h, const Entry *e, unsigned char lengths[3][5], size_t nlen[3])
{
    size_t size = 0;
    for (int f = 0; f < 3; f++) {
        uint32_t n = name_length(h, e->name[f]);
        nlen[f] = put_varint(lengths[f], n);
        size += nlen[f] + n;
    }
    return size;
}

/* Append row `r` of `h` to `b`, whose room the caller made. */
static void
write_row(Buf *b, const Hour *h, uint32_t r, unsigned char lengths[3][5], const size_t nlen[3])
{
    const Entry *e = &h->entries[r];
    for (int f = 0; f < 3; f++) {
        memcpy(b->data + b->len, lengths[f], nlen[f]);
        b->len += nlen[f];
        uint32_t n = name_length(h, e->name[f]);
        memcpy(b->data + b->len, name_bytes(h, e->name[f]), n);
        b->len += n;
    }
    b->len += put_varint(b->data + b->len, entry_count(h, r, 0));
    b->len += put_varint(b->data + b->len, entry_count(h, r, 1));
    b->rows++;
}

/* Add row `r` to the chunk buffer `b` of `bucket`, first handing a full chunk to `list`. */
static int
chunk_row(Buf *b, Py_ssize_t bucket, PyObject *list, const Hour *h, uint32_t r,
          uint32_t max_rows, size_t max_bytes)
{
    unsigned char lengths[3][5];
    size_t nlen[3];
    size_t size = names_size(h, &h->entries[r], lengths, nlen) + 2 * MAX_VARINT;
    if (b->rows > 0 && (b->rows >= max_rows || b->len + size > max_bytes)
        && buf_emit(b, bucket, list) < 0) {
        return -1;
    }
    if (buf_room(b, size) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    write_row(b, h, r, lengths, nlen);
    return 0;
}

static int
parse_limits(PyObject *rows_arg, PyObject *bytes_arg, uint32_t *max_rows, size_t *max_bytes)
{
    uint64_t rows, bytes;
    if (as_u64(rows_arg, "max_rows", &rows) < 0 || as_u64(bytes_arg, "max_bytes", &bytes) < 0) {
        return -1;
    }
    if (rows < 1 || rows > MAX_ENTRIES || bytes < 1) {
        PyErr_SetString(PyExc_ValueError, "max_rows and max_bytes must be at least 1");
        return -1;
    }
    *max_rows = (uint32_t)rows;
    *max_bytes = (size_t)bytes;
    return 0;
}

/* -- HourTables.pack_buckets ------------------------------------------------------------------- */

const char pack_buckets_doc[] =
    "pack_buckets(hour, buckets, max_rows, max_bytes) -> list of (bucket, rows, blob)\n\n"
    "The hour's rows as packed blobs, each of the rows of one bucket (crc32 of the names as\n"
    "written, modulo buckets) in order of first appearance, cut into chunks of at most max_rows\n"
    "rows and, but for a single row, max_bytes bytes. Sorted by bucket, then chunk order.";

PyObject *
HourTables_pack_buckets(HourTables *self, PyObject *args)
{
    PyObject *hour_arg, *rows_arg, *bytes_arg;
    Py_ssize_t buckets;
    uint64_t hour;
    uint32_t max_rows;
    size_t max_bytes;
    if (!PyArg_ParseTuple(args, "OnOO:pack_buckets", &hour_arg, &buckets, &rows_arg,
                          &bytes_arg)) {
        return NULL;
    }
    if (as_u64(hour_arg, "hour", &hour) < 0 || parse_limits(rows_arg, bytes_arg, &max_rows,
                                                            &max_bytes) < 0) {
        return NULL;
    }
    if (buckets < 1 || buckets > 1 << 20) {
        PyErr_SetString(PyExc_ValueError, "buckets must be between 1 and 2**20");
        return NULL;
    }
    if (check_idle(self, 0) < 0) {
        return NULL;
    }
    PyObject *result = PyList_New(0);
    const Hour *h = tables_find(self, hour);
    if (result == NULL || h == NULL || h->len == 0) {
        return result;
    }
    /* The lists below may run Python code (a GC pass): marked as a reader meanwhile, so that
     * such code cannot merge into this hour. */
    self->busy++;
    crc_init();
    Buf *bufs = PyMem_RawCalloc((size_t)buckets, sizeof(Buf));
    PyObject **chunks = PyMem_RawCalloc((size_t)buckets, sizeof(PyObject *));
    if (bufs == NULL || chunks == NULL) {
        PyErr_NoMemory();
        goto error;
    }
    for (uint32_t r = 0; r < h->len; r++) {
        unsigned char lengths[3][5];
        size_t nlen[3];
        const Entry *e = &h->entries[r];
        names_size(h, e, lengths, nlen);
        uint32_t crc = 0xFFFFFFFFu;
        for (int f = 0; f < 3; f++) {
            crc = crc_update(crc, lengths[f], nlen[f]);
            crc = crc_update(crc, (const unsigned char *)name_bytes(h, e->name[f]),
                             name_length(h, e->name[f]));
        }
        Py_ssize_t bucket = (Py_ssize_t)((crc ^ 0xFFFFFFFFu) % (uint32_t)buckets);
        Buf *b = &bufs[bucket];
        if (b->data == NULL) {
            if (buf_room(b, 1) < 0 || (chunks[bucket] = PyList_New(0)) == NULL) {
                if (!PyErr_Occurred()) {
                    PyErr_NoMemory();
                }
                goto error;
            }
            b->data[0] = PACKED_MAGIC;
            b->len = 1;
        }
        if (chunk_row(b, bucket, chunks[bucket], h, r, max_rows, max_bytes) < 0) {
            goto error;
        }
    }
    for (Py_ssize_t bucket = 0; bucket < buckets; bucket++) {
        Buf *b = &bufs[bucket];
        if (b->data == NULL) {
            continue;
        }
        if (buf_emit(b, bucket, chunks[bucket]) < 0) {
            goto error;
        }
        Py_ssize_t n = PyList_GET_SIZE(chunks[bucket]);
        for (Py_ssize_t i = 0; i < n; i++) {
            if (PyList_Append(result, PyList_GET_ITEM(chunks[bucket], i)) < 0) {
                goto error;
            }
        }
    }
    goto done;
error:
    Py_CLEAR(result);
done:
    self->busy--;
    if (bufs != NULL) {
        for (Py_ssize_t i = 0; i < buckets; i++) {
            PyMem_RawFree(bufs[i].data);
        }
    }
    if (chunks != NULL) {
        for (Py_ssize_t i = 0; i < buckets; i++) {
            Py_XDECREF(chunks[i]);
        }
    }
    PyMem_RawFree(bufs);
    PyMem_RawFree(chunks);
    return result;
}

/* -- Sums --------------------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    Hour *h;    /* owned: the rows added so far, keyed as in HourTables */
    int busy;   /* 1 while a call uses h without the GIL; changed only with the GIL held */
    int sorted; /* h's entries are in name order: set by sort, cleared by an insert */
} Sums;

static int
sums_idle(Sums *self)
{
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Sums is in use by another thread");
        return -1;
    }
    return 0;
}

static PyObject *
Sums_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"hour", NULL};
    PyObject *hour_arg;
    uint64_t hour;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O:Sums", kwlist, &hour_arg)
        || as_u64(hour_arg, "hour", &hour) < 0) {
        return NULL;
    }
    Sums *self = (Sums *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->h = hour_new(hour);
    if (self->h == NULL) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    return (PyObject *)self;
}

static void
Sums_dealloc(Sums *self)
{
    hour_free(self->h);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static Py_ssize_t
Sums_len(Sums *self)
{
    return self->h->len;
}

/* Why adding a blob stopped; set without the GIL, raised with it. */
enum { ADD_OK, ADD_MALFORMED, ADD_NO_MEMORY, ADD_OVERFLOW, ADD_FULL };

typedef struct {
    int status;
    Py_ssize_t blob;   /* which blob */
    size_t offset;     /* at which byte of it */
} AddError;

/* Add `amount` to counter `column` of row `row`: -1 past 2**128, -2 without memory. */
static int
add_count(Hour *h, uint32_t row, int column, u128 amount)
{
    u128 before = entry_count(h, row, column);
    u128 after = before + amount;
    if (after < before) {
        return -1;
    }
    if ((after >> 64) != 0 && h->high == NULL) {
        Caps caps;
        if (hour_plan(h, 0, 0, 0, 1, &caps) != STEP_OK || hour_reserve(h, &caps) < 0) {
            return -2;
        }
    }
    hour_add(h, row, column, amount);
    return 0;
}

/* Add the rows of one blob to `h`. Runs without the GIL. Returns 1 if a key was inserted. */
static int
add_blob(Hour *h, const unsigned char *data, size_t size, AddError *err)
{
    const unsigned char *p = data, *end = data + size;
    int inserted = 0;
    if (size < 1 || *p++ != PACKED_MAGIC) {
        err->status = ADD_MALFORMED;
        err->offset = 0;
        return inserted;
    }
    while (p < end) {
        const unsigned char *row_start = p;
        KeyRef key;
        u128 count[2], length;
        int ok = 1;
        for (int f = 0; f < 3 && ok; f++) {
            ok = get_varint(&p, end, &length) == 0 && length <= MAX_NAME_LENGTH
                 && length <= (u128)(end - p);
            if (ok) {
                key.name[f] = (const char *)p;
                key.length[f] = (uint32_t)length;
                p += (size_t)length;
            }
        }
        ok = ok && get_varint(&p, end, &count[0]) == 0 && get_varint(&p, end, &count[1]) == 0;
        if (!ok) {
            err->status = ADD_MALFORMED;
            err->offset = (size_t)(row_start - data);
            return inserted;
        }
        uint32_t hash = short_hash(hash_key(&key));
        uint32_t row = hour_find(h, &key, hash);
        if (row == 0) {
            /* Room for one key and, at most, three new names of all their bytes (names the
             * hour holds already are shared: hour_insert interns them). */
            uint64_t bytes = (uint64_t)key.length[0] + key.length[1] + key.length[2];
            uint32_t name_hash[3];
            for (int f = 0; f < 3; f++) {
                name_hash[f] = short_hash(hash_bytes(key.name[f], key.length[f]));
            }
            Caps caps;
            int planned = hour_plan(h, 1, 3, bytes, 0, &caps);
            if (planned != STEP_OK || hour_reserve(h, &caps) < 0) {
                err->status = planned == STEP_FULL ? ADD_FULL : ADD_NO_MEMORY;
                err->offset = (size_t)(row_start - data);
                return inserted;
            }
            row = hour_insert(h, &key, hash, name_hash) + 1;
            inserted = 1;
        }
        for (int c = 0; c < 2; c++) {
            int status = add_count(h, row - 1, c, count[c]);
            if (status < 0) {
                err->status = status == -1 ? ADD_OVERFLOW : ADD_NO_MEMORY;
                err->offset = (size_t)(row_start - data);
                return inserted;
            }
        }
    }
    return inserted;
}

static PyObject *
Sums_add(Sums *self, PyObject *blobs)
{
    if (sums_idle(self) < 0) {
        return NULL;
    }
    if (!PyList_Check(blobs)) {
        PyErr_Format(PyExc_TypeError, "blobs must be a list, not %.100s", Py_TYPE(blobs)->tp_name);
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(blobs);
    PyObject **held = PyMem_Calloc(n > 0 ? (size_t)n : 1, sizeof(PyObject *));
    if (held == NULL) {
        return PyErr_NoMemory();
    }
    size_t total = 0;
    PyObject *result = NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *blob = PyList_GET_ITEM(blobs, i);
        if (!PyBytes_Check(blob)) {
            PyErr_Format(PyExc_TypeError, "blob %zd is %.100s, not bytes", i,
                         Py_TYPE(blob)->tp_name);
            goto done;
        }
        held[i] = Py_NewRef(blob); /* the list may change while the GIL is released */
        total += (size_t)PyBytes_GET_SIZE(blob);
    }
    AddError err = {ADD_OK, 0, 0};
    int inserted = 0;
    int release = total >= (size_t)RELEASE_GIL_AT * 32;
    PyThreadState *state = NULL;
    if (release) {
        self->busy = 1;
        state = PyEval_SaveThread();
    }
    for (Py_ssize_t i = 0; i < n && err.status == ADD_OK; i++) {
        err.blob = i;
        inserted |= add_blob(self->h, (const unsigned char *)PyBytes_AS_STRING(held[i]),
                             (size_t)PyBytes_GET_SIZE(held[i]), &err);
    }
    if (release) {
        PyEval_RestoreThread(state);
        self->busy = 0;
    }
    if (inserted) {
        self->sorted = 0;
    }
    switch (err.status) {
        case ADD_OK: result = Py_NewRef(Py_None); break;
        case ADD_NO_MEMORY: PyErr_NoMemory(); break;
        case ADD_FULL: step_error(STEP_FULL, "added"); break;
        case ADD_OVERFLOW:
            PyErr_Format(PyExc_OverflowError,
                         "blob %zd, byte %zu: a counter would pass 2**128", err.blob, err.offset);
            break;
        default:
            PyErr_Format(PyExc_ValueError, "blob %zd is not packed rows (byte %zu)", err.blob,
                         err.offset);
    }
done:
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_XDECREF(held[i]);
    }
    PyMem_Free(held);
    return result;
}

/* -- sorting by names --------------------------------------------------------------------------- */

typedef struct {
    uint64_t prefix; /* the first 8 bytes of src_app, big-endian, zero-padded */
    uint32_t row;
} SortKey;

static int
compare_rows(const Hour *h, const SortKey *a, const SortKey *b)
{
    if (a->prefix != b->prefix) {
        return a->prefix < b->prefix ? -1 : 1;
    }
    const Entry *x = &h->entries[a->row], *y = &h->entries[b->row];
    for (int f = 0; f < 3; f++) {
        uint32_t nx = name_length(h, x->name[f]), ny = name_length(h, y->name[f]);
        int c = memcmp(name_bytes(h, x->name[f]), name_bytes(h, y->name[f]), nx < ny ? nx : ny);
        if (c != 0) {
            return c;
        }
        if (nx != ny) {
            return nx < ny ? -1 : 1;
        }
    }
    return 0;
}

/* Sort keys[0:n] (scratch: n more) by merging runs; presorted runs (compacted blobs) are cheap. */
static void
merge_sort(const Hour *h, SortKey *keys, SortKey *scratch, uint32_t n)
{
    if (n < 16) {
        for (uint32_t i = 1; i < n; i++) {
            SortKey k = keys[i];
            uint32_t j = i;
            while (j > 0 && compare_rows(h, &k, &keys[j - 1]) < 0) {
                keys[j] = keys[j - 1];
                j--;
            }
            keys[j] = k;
        }
        return;
    }
    uint32_t half = n / 2;
    merge_sort(h, keys, scratch, half);
    merge_sort(h, keys + half, scratch, n - half);
    if (compare_rows(h, &keys[half - 1], &keys[half]) <= 0) {
        return; /* already in order */
    }
    memcpy(scratch, keys, half * sizeof(SortKey));
    uint32_t i = 0, j = half, k = 0;
    while (i < half && j < n) {
        keys[k++] = compare_rows(h, &keys[j], &scratch[i]) < 0 ? keys[j++] : scratch[i++];
    }
    while (i < half) {
        keys[k++] = scratch[i++];
    }
}

/* Put h's entries in name order and rebuild its slots. -1 without memory (h unchanged). */
static int
sort_entries(Hour *h)
{
    uint32_t n = h->len;
    SortKey *keys = PyMem_RawMalloc(2 * (size_t)(n > 0 ? n : 1) * sizeof(SortKey));
    Entry *entries = PyMem_RawMalloc((size_t)(h->cap > 0 ? h->cap : 1) * sizeof(Entry));
    uint64_t(*high)[2] = h->high == NULL ? NULL : PyMem_RawMalloc(h->cap * sizeof(h->high[0]));
    Slot *slots = NULL;
    if (keys == NULL || entries == NULL || (h->high != NULL && high == NULL)) {
        goto error;
    }
    for (uint32_t r = 0; r < n; r++) {
        unsigned char first[8] = {0};
        uint32_t src = h->entries[r].name[0], length = name_length(h, src);
        memcpy(first, name_bytes(h, src), length < 8 ? length : 8);
        uint64_t prefix = 0;
        for (int i = 0; i < 8; i++) {
            prefix = (prefix << 8) | first[i];
        }
        keys[r].prefix = prefix;
        keys[r].row = r;
    }
    merge_sort(h, keys, keys + n, n);
    for (uint32_t r = 0; r < n; r++) {
        entries[r] = h->entries[keys[r].row];
        if (high != NULL) {
            memcpy(high[r], h->high[keys[r].row], sizeof(high[0]));
        }
    }
    if (h->slots != NULL) {
        slots = slots_rebuild((uint64_t)h->mask + 1, n, entries, sizeof(Entry),
                              offsetof(Entry, hash));
        if (slots == NULL) {
            goto error;
        }
        PyMem_RawFree(h->slots);
        h->slots = slots;
    }
    PyMem_RawFree(h->entries);
    h->entries = entries;
    if (high != NULL) {
        PyMem_RawFree(h->high);
        h->high = high;
    }
    PyMem_RawFree(keys);
    return 0;
error:
    PyMem_RawFree(keys);
    PyMem_RawFree(entries);
    PyMem_RawFree(high);
    return -1;
}

/* Sort (once) with or without the GIL, as the size says. */
static int
sums_sort(Sums *self)
{
    if (self->sorted) {
        return 0;
    }
    int status;
    if (self->h->len >= RELEASE_GIL_AT) {
        self->busy = 1;
        Py_BEGIN_ALLOW_THREADS
        status = sort_entries(self->h);
        Py_END_ALLOW_THREADS
        self->busy = 0;
    }
    else {
        status = sort_entries(self->h);
    }
    if (status < 0) {
        PyErr_NoMemory();
        return -1;
    }
    self->sorted = 1;
    return 0;
}

/* -- answers ------------------------------------------------------------------------------------ */

static PyObject *
Sums_json(Sums *self, PyObject *Py_UNUSED(ignored))
{
    if (sums_idle(self) < 0 || sums_sort(self) < 0) {
        return NULL;
    }
    const Hour *h = self->h;
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)hour_json_length(h));
    if (out == NULL) {
        return NULL;
    }
    if (h->len >= RELEASE_GIL_AT) {
        self->busy = 1;
        Py_BEGIN_ALLOW_THREADS
        hour_json_write(h, PyBytes_AS_STRING(out));
        Py_END_ALLOW_THREADS
        self->busy = 0;
    }
    else {
        hour_json_write(h, PyBytes_AS_STRING(out));
    }
    return out;
}

static PyObject *
Sums_rows(Sums *self, PyObject *Py_UNUSED(ignored))
{
    if (sums_idle(self) < 0 || sums_sort(self) < 0) {
        return NULL;
    }
    const Hour *h = self->h;
    PyObject **names = PyMem_Calloc(h->nnames > 0 ? h->nnames : 1, sizeof(PyObject *));
    PyObject *result = names == NULL ? PyErr_NoMemory() : PyList_New(h->len);
    for (uint32_t r = 0; result != NULL && r < h->len; r++) {
        PyObject *row = PyTuple_New(5);
        if (row == NULL) {
            Py_CLEAR(result);
            break;
        }
        PyList_SET_ITEM(result, r, row);
        for (int f = 0; f < 5; f++) {
            PyObject *value;
            if (f < 3) {
                uint32_t name = h->entries[r].name[f];
                if (names[name] == NULL) {
                    names[name] = PyUnicode_DecodeUTF8(name_bytes(h, name),
                                                       name_length(h, name), "strict");
                }
                value = Py_XNewRef(names[name]);
            }
            else {
                value = long_from_u128(entry_count(h, r, f - 3));
            }
            if (value == NULL) {
                Py_CLEAR(result);
                break;
            }
            PyTuple_SET_ITEM(row, f, value);
        }
    }
    if (names != NULL) {
        for (uint32_t i = 0; i < h->nnames; i++) {
            Py_XDECREF(names[i]);
        }
        PyMem_Free(names);
    }
    return result;
}

static PyObject *
Sums_pack(Sums *self, PyObject *args)
{
    PyObject *rows_arg, *bytes_arg;
    uint32_t max_rows;
    size_t max_bytes;
    if (!PyArg_ParseTuple(args, "OO:pack", &rows_arg, &bytes_arg)
        || parse_limits(rows_arg, bytes_arg, &max_rows, &max_bytes) < 0) {
        return NULL;
    }
    if (sums_idle(self) < 0 || sums_sort(self) < 0) {
        return NULL;
    }
    const Hour *h = self->h;
    PyObject *chunks = PyList_New(0), *result = NULL;
    Buf b = {0};
    if (chunks == NULL || buf_room(&b, 1) < 0) {
        goto done;
    }
    b.data[0] = PACKED_MAGIC;
    b.len = 1;
    for (uint32_t r = 0; r < h->len; r++) {
        if (chunk_row(&b, 0, chunks, h, r, max_rows, max_bytes) < 0) {
            goto done;
        }
    }
    if (b.rows > 0 && buf_emit(&b, 0, chunks) < 0) {
        goto done;
    }
    Py_ssize_t n = PyList_GET_SIZE(chunks);
    result = PyList_New(n);
    for (Py_ssize_t i = 0; result != NULL && i < n; i++) {
        PyList_SET_ITEM(result, i, Py_NewRef(PyTuple_GET_ITEM(PyList_GET_ITEM(chunks, i), 2)));
    }
done:
    if (result == NULL && !PyErr_Occurred()) {
        PyErr_NoMemory();
    }
    PyMem_RawFree(b.data);
    Py_XDECREF(chunks);
    return result;
}

static PyObject *
Sums_get_hour(Sums *self, void *Py_UNUSED(closure))
{
    return PyLong_FromUnsignedLongLong(self->h->hour);
}

static PyMethodDef Sums_methods[] = {
    {"add", (PyCFunction)Sums_add, METH_O,
     "add(blobs) -> None\n\nAdd the rows of a list of packed blobs. ValueError for a blob that\n"
     "is not packed rows, OverflowError past 2**128; either leaves the sums partly added."},
    {"json", (PyCFunction)Sums_json, METH_NOARGS,
     "json() -> bytes\n\nThe rows as GET /flows answers them, sorted by their names."},
    {"rows", (PyCFunction)Sums_rows, METH_NOARGS,
     "rows() -> list of (src_app, dest_app, vpc_id, bytes_tx, bytes_rx), sorted by names"},
    {"pack", (PyCFunction)Sums_pack, METH_VARARGS,
     "pack(max_rows, max_bytes) -> list of blobs\n\nThe rows as packed blobs, sorted by names,\n"
     "cut into chunks as HourTables.pack_buckets cuts them."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Sums_getset[] = {
    {"hour", (getter)Sums_get_hour, NULL, "the hour the rows belong to", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods Sums_as_sequence = {
    .sq_length = (lenfunc)Sums_len,
};

PyTypeObject Sums_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "flowagg.store.table.Sums",
    .tp_basicsize = sizeof(Sums),
    .tp_dealloc = (destructor)Sums_dealloc,
    .tp_as_sequence = &Sums_as_sequence,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Sums(hour)\n\nPacked blobs of one hour added up exactly (to 2**128), answered as\n"
              "rows, JSON or blobs sorted by names. len() is the number of keys. Not thread-safe.",
    .tp_methods = Sums_methods,
    .tp_getset = Sums_getset,
    .tp_new = Sums_new,
};
