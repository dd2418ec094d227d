/* The table of one hour: its entries, names and slots, growth, lookup, insertion, and its
 * JSON. Nothing here touches Python objects, so all of it may run without the GIL. */

#include "table.h"

Hour *
hour_new(uint64_t hour)
{
    Hour *h = PyMem_RawCalloc(1, sizeof(Hour));
    if (h != NULL) {
        h->hour = hour;
    }
    return h;
}

void
hour_free(Hour *h)
{
    if (h == NULL) {
        return;
    }
    PyMem_RawFree(h->entries);
    PyMem_RawFree(h->slots);
    PyMem_RawFree(h->names);
    PyMem_RawFree(h->name_slots);
    PyMem_RawFree(h->arena);
    PyMem_RawFree(h->high);
    PyMem_RawFree(h);
}

Caps
hour_caps(const Hour *h)
{
    return (Caps){
        .cap = h->cap,
        .slots = h->slots != NULL ? (uint64_t)h->mask + 1 : 0,
        .names_cap = h->names_cap,
        .name_slots = h->name_slots != NULL ? (uint64_t)h->name_mask + 1 : 0,
        .arena_cap = h->arena_cap,
        .high = h->high != NULL,
    };
}

size_t
caps_nbytes(const Caps *c)
{
    return sizeof(Hour) + c->cap * sizeof(Entry) + c->slots * sizeof(Slot)
           + c->names_cap * sizeof(Name) + c->name_slots * sizeof(Slot) + c->arena_cap
           + (c->high ? c->cap * 2 * sizeof(uint64_t) : 0);
}

size_t
hour_nbytes(const Hour *h)
{
    Caps c = hour_caps(h);
    return caps_nbytes(&c);
}

/* Capacity for `need` items in an array of `cap`: exactly `need` the first time (an hour that
 * stays small costs what it holds), then grown by half (double while small). */
static uint64_t
capacity_for(uint64_t cap, uint64_t need)
{
    if (need <= cap) {
        return cap;
    }
    return cap == 0 ? need : grown(cap, need);
}

/* Slots for `items` items held in an index of `size` slots (0: none): none while small, the
 * same while at most 3/4 full, else the power of two slots_for gives. */
static uint64_t
index_for(uint64_t size, uint64_t items)
{
    if (items <= SMALL) {
        return size;
    }
    return size != 0 && items <= size * 3 / 4 ? size : slots_for(items);
}

int
hour_plan(const Hour *h, uint64_t keys, uint64_t names, uint64_t bytes, int need_high, Caps *out)
{
    uint64_t want = (uint64_t)h->len + keys, want_names = (uint64_t)h->nnames + names;
    if (want > max_entries || want_names > max_entries || bytes > UINT64_MAX - h->arena_len) {
        return STEP_FULL;
    }
    Caps c = hour_caps(h);
    c.cap = capacity_for(c.cap, want);
    c.cap = c.cap > max_entries ? max_entries : c.cap;
    c.slots = index_for(c.slots, want);
    c.names_cap = capacity_for(c.names_cap, want_names);
    c.names_cap = c.names_cap > max_entries ? max_entries : c.names_cap;
    c.name_slots = index_for(c.name_slots, want_names);
    c.arena_cap = capacity_for(c.arena_cap, h->arena_len + bytes);
    if (c.arena_cap == 0 && want_names > 0) {
        c.arena_cap = 1; /* names point into the arena, even empty ones: never at NULL */
    }
    c.high = c.high || (need_high && c.cap > 0);
    *out = c;
    return STEP_OK;
}

/* Rebuild a slot array of `size` slots for `count` items whose short hashes `hash_of` gives. */
Slot *
slots_rebuild(uint64_t size, uint32_t count, const void *items, size_t stride, size_t hash_at)
{
    Slot *slots = PyMem_RawCalloc(size, sizeof(Slot));
    if (slots == NULL) {
        return NULL;
    }
    const char *p = items;
    for (uint32_t i = 0; i < count; i++) {
        uint32_t hash;
        memcpy(&hash, p + (size_t)i * stride + hash_at, sizeof(hash));
        slot_put(slots, (uint32_t)(size - 1), i, hash);
    }
    return slots;
}

/* Give the hour the capacities hour_plan chose (never smaller ones). Changes capacities only:
 * on failure (-1: no memory, nothing raised) the hour holds what it held, and hour_nbytes
 * says what it allocates then. */
int
hour_reserve(Hour *h, const Caps *caps)
{
    if (caps->cap > h->cap) {
        Entry *entries = PyMem_RawRealloc(h->entries, caps->cap * sizeof(Entry));
        if (entries == NULL) {
            return -1;
        }
        h->entries = entries;
        if (h->high != NULL) {
            uint64_t(*high)[2] = PyMem_RawRealloc(h->high, caps->cap * sizeof(h->high[0]));
            if (high == NULL) {
                return -1; /* entries grew, high did not: cap stays, which is consistent */
            }
            memset(high + h->cap, 0, (caps->cap - h->cap) * sizeof(high[0]));
            h->high = high;
        }
        h->cap = (uint32_t)caps->cap;
    }
    if (caps->slots != 0 && (h->slots == NULL || caps->slots != (uint64_t)h->mask + 1)) {
        Slot *slots = slots_rebuild(caps->slots, h->len, h->entries, sizeof(Entry),
                                    offsetof(Entry, hash));
        if (slots == NULL) {
            return -1;
        }
        PyMem_RawFree(h->slots);
        h->slots = slots;
        h->mask = (uint32_t)(caps->slots - 1);
    }
    if (caps->names_cap > h->names_cap) {
        Name *names = PyMem_RawRealloc(h->names, caps->names_cap * sizeof(Name));
        if (names == NULL) {
            return -1;
        }
        h->names = names;
        h->names_cap = (uint32_t)caps->names_cap;
    }
    if (caps->name_slots != 0
        && (h->name_slots == NULL || caps->name_slots != (uint64_t)h->name_mask + 1)) {
        Slot *slots = slots_rebuild(caps->name_slots, h->nnames, h->names, sizeof(Name),
                                    offsetof(Name, hash));
        if (slots == NULL) {
            return -1;
        }
        PyMem_RawFree(h->name_slots);
        h->name_slots = slots;
        h->name_mask = (uint32_t)(caps->name_slots - 1);
    }
    if (caps->arena_cap > h->arena_cap) {
        char *arena = PyMem_RawRealloc(h->arena, caps->arena_cap);
        if (arena == NULL) {
            return -1;
        }
        h->arena = arena;
        h->arena_cap = caps->arena_cap;
    }
    if (caps->high && h->high == NULL && h->cap > 0) {
        h->high = PyMem_RawCalloc(h->cap, sizeof(h->high[0]));
        if (h->high == NULL) {
            return -1;
        }
    }
    return 0;
}

/* The number of the name, or -1 if the hour does not hold it. */
int64_t
hour_find_name(const Hour *h, const char *bytes, uint32_t length, uint32_t hash)
{
    if (h->name_slots == NULL) { /* a small hour: look at each name */
        for (uint32_t n = 0; n < h->nnames; n++) {
            if (h->names[n].hash == hash && name_equals(h, n, bytes, length)) {
                return n;
            }
        }
        return -1;
    }
    for (uint32_t i = hash & h->name_mask;; i = (i + 1) & h->name_mask) {
        const Slot *s = &h->name_slots[i];
        if (s->index == SLOT_NONE) {
            return -1;
        }
        if (s->hash == hash && name_equals(h, s->index - 1, bytes, length)) {
            return s->index - 1;
        }
    }
}

static int
needs_escape(const char *bytes, uint32_t length)
{
    for (uint32_t i = 0; i < length; i++) {
        unsigned char c = (unsigned char)bytes[i];
        if (c < 0x20 || c == '"' || c == '\\') {
            return 1;
        }
    }
    return 0;
}

/* The number of the name, added if new. Needs the room hour_reserve made. */
static uint32_t
hour_intern_name(Hour *h, const char *bytes, uint32_t length, uint32_t hash)
{
    int64_t found = hour_find_name(h, bytes, length, hash);
    if (found >= 0) {
        return (uint32_t)found;
    }
    uint32_t name = h->nnames++;
    Name *n = &h->names[name];
    n->offset = h->arena_len;
    n->length = length | (needs_escape(bytes, length) ? NAME_ESCAPE : 0);
    n->hash = hash;
    if (length > 0) { /* an empty name has no bytes to copy (and maybe no arena yet) */
        memcpy(h->arena + h->arena_len, bytes, length);
    }
    h->arena_len += length;
    if (h->name_slots != NULL) {
        slot_put(h->name_slots, h->name_mask, name, hash);
    }
    return name;
}

/* The key's row + 1, or 0 if the hour does not hold it. */
static inline int
entry_is(const Hour *h, const Entry *e, const KeyRef *key)
{
    return name_equals(h, e->name[0], key->name[0], key->length[0])
           && name_equals(h, e->name[1], key->name[1], key->length[1])
           && name_equals(h, e->name[2], key->name[2], key->length[2]);
}

uint32_t
hour_find(const Hour *h, const KeyRef *key, uint32_t hash)
{
    if (h->slots == NULL) { /* a small hour: look at each entry */
        for (uint32_t r = 0; r < h->len; r++) {
            if (h->entries[r].hash == hash && entry_is(h, &h->entries[r], key)) {
                return r + 1;
            }
        }
        return 0;
    }
    for (uint32_t i = hash & h->mask;; i = (i + 1) & h->mask) {
        const Slot *s = &h->slots[i];
        if (s->index == SLOT_NONE) {
            return 0;
        }
        if (s->hash == hash && entry_is(h, &h->entries[s->index - 1], key)) {
            return s->index;
        }
    }
}

/* Append a new key (known to be absent) with zero counters; returns its row. Needs the room
 * hour_reserve made. */
uint32_t
hour_insert(Hour *h, const KeyRef *key, uint32_t hash, const uint32_t name_hash[3])
{
    uint32_t row = h->len++;
    Entry *e = &h->entries[row];
    e->count[0] = e->count[1] = 0;
    for (int f = 0; f < 3; f++) {
        e->name[f] = hour_intern_name(h, key->name[f], key->length[f], name_hash[f]);
    }
    e->hash = hash;
    if (h->high != NULL) {
        h->high[row][0] = h->high[row][1] = 0;
    }
    if (h->slots != NULL) {
        slot_put(h->slots, h->mask, row, hash);
    }
    return row;
}

/* -- JSON ------------------------------------------------------------------------------------- */

/* The JSON of a row, as msgspec encodes a flowagg Flow record, between these pieces. */
static const char ROW_SRC[] = "{\"src_app\":";
static const char ROW_DEST[] = ",\"dest_app\":";
static const char ROW_VPC[] = ",\"vpc_id\":";
static const char ROW_TX[] = ",\"bytes_tx\":";
static const char ROW_RX[] = ",\"bytes_rx\":";
static const char ROW_HOUR[] = ",\"hour\":";
static const char ROW_END[] = "}";
#define PIECE(s) (sizeof(s) - 1)
#define ROW_FIXED                                                                             \
    (PIECE(ROW_SRC) + PIECE(ROW_DEST) + PIECE(ROW_VPC) + PIECE(ROW_TX) + PIECE(ROW_RX)          \
     + PIECE(ROW_HOUR) + PIECE(ROW_END) + 6 /* the names' quotes */)

static const char HEX[] = "0123456789abcdef";

/* Bytes of a name once escaped as msgspec escapes it (without its quotes). */
static size_t
escaped_length(const char *s, uint32_t n)
{
    size_t length = 0;
    for (uint32_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\' || c == '\b' || c == '\t' || c == '\n' || c == '\f'
            || c == '\r') {
            length += 2;
        }
        else if (c < 0x20) {
            length += 6;
        }
        else {
            length += 1;
        }
    }
    return length;
}

static char *
write_escaped(char *out, const char *s, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char short_form = 0;
        switch (c) {
            case '"': short_form = '"'; break;
            case '\\': short_form = '\\'; break;
            case '\b': short_form = 'b'; break;
            case '\t': short_form = 't'; break;
            case '\n': short_form = 'n'; break;
            case '\f': short_form = 'f'; break;
            case '\r': short_form = 'r'; break;
            default: break;
        }
        if (short_form) {
            *out++ = '\\';
            *out++ = short_form;
        }
        else if (c < 0x20) {
            memcpy(out, "\\u00", 4);
            out[4] = HEX[c >> 4];
            out[5] = HEX[c & 0xf];
            out += 6;
        }
        else {
            *out++ = (char)c;
        }
    }
    return out;
}

static size_t
name_json_length(const Hour *h, uint32_t name)
{
    const Name *n = &h->names[name];
    uint32_t length = n->length & ~NAME_ESCAPE;
    return (n->length & NAME_ESCAPE) ? escaped_length(h->arena + n->offset, length) : length;
}

static char *
write_name(char *out, const Hour *h, uint32_t name)
{
    const Name *n = &h->names[name];
    uint32_t length = n->length & ~NAME_ESCAPE;
    *out++ = '"';
    if (n->length & NAME_ESCAPE) {
        out = write_escaped(out, h->arena + n->offset, length);
    }
    else {
        memcpy(out, h->arena + n->offset, length);
        out += length;
    }
    *out++ = '"';
    return out;
}

static size_t
digits64(uint64_t v)
{
    size_t n = 1;
    while (v >= 10) {
        v /= 10;
        n++;
    }
    return n;
}

static size_t
digits128(u128 v)
{
    size_t n = 1;
    while (v >= 10) {
        v /= 10;
        n++;
    }
    return n;
}

static char *
write_u64(char *out, uint64_t v, size_t n)
{
    char *end = out + n;
    do {
        *--end = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    return out + n;
}

static char *
write_u128(char *out, u128 v, size_t n)
{
    char *end = out + n;
    do {
        *--end = (char)('0' + (int)(v % 10));
        v /= 10;
    } while (v != 0);
    return out + n;
}

static size_t
count_json_length(const Hour *h, uint32_t row, int column)
{
    return h->high != NULL && h->high[row][column] != 0
               ? digits128(entry_count(h, row, column))
               : digits64(h->entries[row].count[column]);
}

static char *
write_count(char *out, const Hour *h, uint32_t row, int column)
{
    if (h->high != NULL && h->high[row][column] != 0) {
        u128 v = entry_count(h, row, column);
        return write_u128(out, v, digits128(v));
    }
    uint64_t v = h->entries[row].count[column];
    return write_u64(out, v, digits64(v));
}

#define PUT(out, piece) (memcpy((out), (piece), PIECE(piece)), (out) + PIECE(piece))

size_t
hour_json_length(const Hour *h)
{
    size_t hour_digits = digits64(h->hour);
    size_t length = 2 + (h->len > 0 ? h->len - 1 : 0); /* brackets and commas */
    for (uint32_t r = 0; r < h->len; r++) {
        const Entry *e = &h->entries[r];
        length += ROW_FIXED + hour_digits + name_json_length(h, e->name[0])
                  + name_json_length(h, e->name[1]) + name_json_length(h, e->name[2])
                  + count_json_length(h, r, 0) + count_json_length(h, r, 1);
    }
    return length;
}

char *
hour_json_write(const Hour *h, char *out)
{
    size_t hour_digits = digits64(h->hour);
    *out++ = '[';
    for (uint32_t r = 0; r < h->len; r++) {
        const Entry *e = &h->entries[r];
        if (r > 0) {
            *out++ = ',';
        }
        out = PUT(out, ROW_SRC);
        out = write_name(out, h, e->name[0]);
        out = PUT(out, ROW_DEST);
        out = write_name(out, h, e->name[1]);
        out = PUT(out, ROW_VPC);
        out = write_name(out, h, e->name[2]);
        out = PUT(out, ROW_TX);
        out = write_count(out, h, r, 0);
        out = PUT(out, ROW_RX);
        out = write_count(out, h, r, 1);
        out = PUT(out, ROW_HOUR);
        out = write_u64(out, h->hour, hour_digits);
        out = PUT(out, ROW_END);
    }
    *out++ = ']';
    return out;
}

