/* The bundle verifier's hot loops in C, each the twin of a Python function that stays the
 * reference (audit/native.py loads this module; without it the Python versions run):
 *
 *   scan        audit.leafscan._scan_python     the per-leaf checks and tallies
 *   records     audit.leafscan._records_python  a run's lines of entries.jsonl and audit.jsonl
 *   fold_lots   audit.leafscan._fold_lots_python  the cached lots' side of the tallies
 *   fold        audit.tally._fold_python        a tally folded into its buckets
 *   subtree_root  audit.bundle._subtree_root_python  a complete Merkle subtree (RFC 6962)
 *   count_lines audit.bundle._count_lines        the newlines of a chunk
 *
 * Why C: per leaf, the Python loop spends most of its time between the compiled steps it
 * calls (orjson, hashlib): checking the envelope, the entry's shape, its postings and lots, and
 * adding to the tallies. Here those checks walk the objects the parse made, with no bytecode
 * between them; SHA-256 and BLAKE2b are OpenSSL's, the library hashlib uses.
 *
 * What it trusts: nothing it did not check itself. Where the Python loop parses with orjson,
 * re-serialises with sorted keys and compares, this code reads the bytes once
 * (parse_canonical), into the same objects, and only when they are exactly the canonical form
 * of what they hold: it recognises that one form and decides nothing else. A leaf it has any
 * doubt about goes, untouched, to the fallback (audit.leafscan._scan_line), which names what
 * is wrong; nothing is tallied before a leaf has passed every check.
 * tests/unit/test_leafscan.py holds every function here to its twin, and the parser to the
 * leaf-by-leaf code on leaves with bytes inserted, removed and replaced.
 *
 * One difference of means, not of verdict: where the Python loop searches the bytes for a number
 * with a fraction or an exponent, this loop refuses one as it reads it. A float-looking token
 * inside a string sends the Python loop the slow way and not this one; the slow way would
 * accept the leaf all the same.
 *
 * Every function runs with the GIL held. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#if OPENSSL_VERSION_NUMBER < 0x30000000L
#error "OpenSSL 3 or later is needed (EVP_MD_fetch)"
#endif
#include <string.h>

/* Set once by configure(): the helpers the loop calls and the constants it compares with. */
static PyObject *loads, *dumps, *decode_error, *encode_error;
static PyObject *entry_kinds, *audit_kind, *adjustment_kind, *accounts, *parse_account;
static PyObject *known_stamp, *wide_text_ok, *is_normalized, *lot_terms;
static PyObject *nfc;
static long long envelope_version;
static Py_ssize_t max_depth;

#define ENVELOPE_KEYS 8
#define ENTRY_KEYS 14
#define LOT_KEYS 8
#define MAX_SAFE_INTEGER 9007199254740991LL /* 2^53 − 1 */
#define MAX_DEPTH_LIMIT 128 /* brackets open at once; configure() refuses a larger max_depth */
#define MAX_HELD 16 /* postings or lots held for tallying; a leaf with more takes the fallback */

/* Interned member names, in sorted order as the canonical bytes hold them. */
static const char *envelope_names[ENVELOPE_KEYS] = {
    "committed_at", "entry", "index", "kind", "log", "nonce", "prev", "v"};
static const char *entry_names[ENTRY_KEYS] = {
    "attributes", "booked_at", "business_time", "credential", "id", "idempotency_key", "kind",
    "lot_moves", "lots_opened", "lots_released", "partner", "postings", "reason", "refers_to"};
static const char *lot_names[LOT_KEYS] = {
    "amount", "earned_at", "expires_at", "funder", "id", "member", "pending_until",
    "price_version"};
static PyObject *envelope_keys[ENVELOPE_KEYS], *entry_keys[ENTRY_KEYS], *lot_keys[LOT_KEYS];
static PyObject *key_account, *key_amount, *key_lot, *key_delta, *key_kind, *key_id;

enum { E_STAMP, E_ENTRY, E_INDEX, E_KIND, E_LOG, E_NONCE, E_PREV, E_V };
enum {
    B_ATTRIBUTES, B_BOOKED_AT, B_BUSINESS_TIME, B_CREDENTIAL, B_ID, B_IDEMPOTENCY_KEY, B_KIND,
    B_MOVES, B_OPENED, B_RELEASED, B_PARTNER, B_POSTINGS, B_REASON, B_REFERS_TO
};
enum { L_AMOUNT, L_EARNED, L_EXPIRES, L_FUNDER, L_ID, L_MEMBER, L_UNTIL, L_PRICE };

static int
intern_all(const char **names, PyObject **keys, int n)
{
    for (int i = 0; i < n; i++) {
        keys[i] = PyUnicode_InternFromString(names[i]);
        if (keys[i] == NULL)
            return -1;
    }
    return 0;
}

/* Whether the str ``key`` is ``name`` (an interned ASCII str): the same object, or the same
 * text. */
static int
same_key(PyObject *key, PyObject *name)
{
    if (key == name)
        return 1;
    Py_ssize_t length = PyUnicode_GET_LENGTH(name);
    return PyUnicode_CheckExact(key) && PyUnicode_IS_ASCII(key) &&
           PyUnicode_GET_LENGTH(key) == length &&
           memcmp(PyUnicode_1BYTE_DATA(key), PyUnicode_1BYTE_DATA(name), (size_t)length) == 0;
}

/* 1 when ``d`` is a dict with exactly the ``n`` members ``keys`` (their values into ``out``, as
 * borrowed references), 0 when not, -1 on error. ``keys`` are in sorted order, as the members
 * of a canonical object are, and orjson keeps them in the order it read them: so the dict is
 * walked first, and looked up key by key only when its order differs. */
static int
members(PyObject *d, PyObject **keys, Py_ssize_t n, PyObject **out)
{
    if (!PyDict_CheckExact(d) || PyDict_GET_SIZE(d) != n)
        return 0;
    Py_ssize_t pos = 0, i = 0;
    PyObject *key, *value;
    while (PyDict_Next(d, &pos, &key, &value) && same_key(key, keys[i]))
        out[i++] = value;
    if (i == n)
        return 1;
    for (i = 0; i < n; i++) {
        out[i] = PyDict_GetItemWithError(d, keys[i]);
        if (out[i] == NULL)
            return PyErr_Occurred() ? -1 : 0;
    }
    return 1;
}

/* Whether a byte is a lowercase hex digit (1) or not (0): one table lookup, no branch. */
static const unsigned char lower_hex[256] = {
    ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1, ['7'] = 1,
    ['8'] = 1, ['9'] = 1, ['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1,
};

/* Whether ``s`` is a str of exactly ``n`` lowercase hex digits (the regex [0-9a-f]{n}). */
static int
is_hex(PyObject *s, Py_ssize_t n)
{
    if (!PyUnicode_CheckExact(s) || !PyUnicode_IS_ASCII(s) || PyUnicode_GET_LENGTH(s) != n)
        return 0;
    const unsigned char *p = PyUnicode_1BYTE_DATA(s);
    unsigned char all = 1;
    for (Py_ssize_t i = 0; i < n; i++)
        all &= lower_hex[p[i]];
    return all;
}

/* Whether ``s`` is a str holding a lowercase UUID, as audit.leafscan._UUID matches it. */
static int
is_uuid(PyObject *s)
{
    if (!PyUnicode_CheckExact(s) || !PyUnicode_IS_ASCII(s) || PyUnicode_GET_LENGTH(s) != 36)
        return 0;
    const unsigned char *p = PyUnicode_1BYTE_DATA(s);
    unsigned char all = p[8] == '-' && p[13] == '-' && p[18] == '-' && p[23] == '-';
    for (int i = 0; i < 36; i++)
        all &= lower_hex[p[i]] | (i == 8 || i == 13 || i == 18 || i == 23);
    return all;
}

/* The value of an exact int, or 0 with *ok cleared when it is not one. The canonical round trip
 * has already bounded every integer to ±(2^53 − 1). */
static long long
exact_int(PyObject *o, int *ok)
{
    if (!PyLong_CheckExact(o)) {
        *ok = 0;
        return 0;
    }
    int overflow = 0;
    long long value = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (overflow || (value == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        *ok = 0;
        return 0;
    }
    return value;
}

/* Whether a str is in NFC: 1, 0 or -1 (error). ASCII always is. */
static int
in_nfc(PyObject *text)
{
    if (PyUnicode_IS_ASCII(text))
        return 1;
    PyObject *args[2] = {nfc, text};
    PyObject *verdict = PyObject_Vectorcall(is_normalized, args, 2, NULL);
    int result = verdict == NULL ? -1 : PyObject_IsTrue(verdict);
    Py_XDECREF(verdict);
    return result;
}

/* SHA-256 of prefix ‖ data into out[32], with OpenSSL (the library hashlib uses), through one
 * context kept for the module: its callers hold the GIL, and it calls no Python code, so no
 * other thread can come in between. The digest is fetched once: named by EVP_sha256() instead,
 * OpenSSL 3 would look it up again, under a lock, at every call. */
static EVP_MD_CTX *sha_context;
static EVP_MD *sha256_md;

static int
sha256_of(unsigned char prefix, const void *data, size_t size, unsigned char *out)
{
    unsigned int length = 0;
    if (!(EVP_DigestInit_ex2(sha_context, sha256_md, NULL) &&
          EVP_DigestUpdate(sha_context, &prefix, 1) &&
          EVP_DigestUpdate(sha_context, data, size) &&
          EVP_DigestFinal_ex(sha_context, out, &length) && length == 32)) {
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL's SHA-256 failed");
        return -1;
    }
    return 0;
}

/* -- tallies folded as they are added (audit.tally) ----------------------------------------- *
 *
 * The Python loops add exact values per key, then fold each tally into buckets
 * (audit.tally.fold_many): F[b] = Σ w(k)·v(k) mod p. A fold is a sum, so the loops here fold
 * each value as they add it, into one array of residues per tally, with the same slots (bucket,
 * weight) for the same keys: the same buckets come out, and no dict of exact values is built. */

#define MERSENNE_61 ((1ULL << 61) - 1)

/* The tallies in the order of audit.leafscan.TALLIES. */
enum { T_BALANCE, T_STATE, T_TERMS, T_COVER, T_PENDING, N_TALLIES };

static unsigned long long
mod_p(unsigned __int128 value)
{
    /* 2^61 ≡ 1 (mod 2^61 − 1): fold the high bits onto the low ones, twice, then subtract. */
    unsigned __int128 folded = (value & MERSENNE_61) + (value >> 61);
    folded = (folded & MERSENNE_61) + (folded >> 61);
    unsigned long long result = (unsigned long long)folded;
    return result >= MERSENNE_61 ? result - MERSENNE_61 : result;
}

/* The residue of a 64-bit integer modulo 2^61 − 1, in [0, p). */
static unsigned long long
residue_of(long long value)
{
    long long r = value % (long long)MERSENNE_61;
    return (unsigned long long)(r < 0 ? r + (long long)MERSENNE_61 : r);
}

/* The residue of a Python int modulo 2^61 − 1, in [0, p); (unsigned long long)-1 on error. */
static unsigned long long
residue(PyObject *value)
{
    int overflow = 0;
    long long small = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (!overflow) {
        if (small == -1 && PyErr_Occurred())
            return (unsigned long long)-1;
        return residue_of(small);
    }
    PyObject *p = PyLong_FromUnsignedLongLong(MERSENNE_61);
    PyObject *r = p == NULL ? NULL : PyNumber_Remainder(value, p); /* Python's: in [0, p) */
    Py_XDECREF(p);
    if (r == NULL)
        return (unsigned long long)-1;
    unsigned long long result = PyLong_AsUnsignedLongLong(r);
    Py_DECREF(r);
    return result;
}

/* BLAKE2b-128 keyed with ``secret`` (RFC 7693, as hashlib.blake2b(key=secret, digest_size=16)):
 * OpenSSL's BLAKE2BMAC, fetched once. A context keyed once per call is copied for each key, as
 * the Python twin copies its keyed hasher. */
static EVP_MAC *blake2b_mac;

static EVP_MAC_CTX *
keyed_blake2b_new(const void *secret, size_t size)
{
    size_t digest_size = 16;
    OSSL_PARAM params[] = {OSSL_PARAM_construct_size_t(OSSL_MAC_PARAM_SIZE, &digest_size),
                           OSSL_PARAM_END};
    EVP_MAC_CTX *keyed = EVP_MAC_CTX_new(blake2b_mac);
    if (keyed == NULL || !EVP_MAC_init(keyed, secret, size, params)) {
        EVP_MAC_CTX_free(keyed);
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL's BLAKE2b failed");
        return NULL;
    }
    return keyed;
}

static int
keyed_blake2b(EVP_MAC_CTX *keyed, const char *data, size_t size, unsigned char *out)
{
    size_t length = 0;
    EVP_MAC_CTX *mac = EVP_MAC_CTX_dup(keyed);
    int ok = mac != NULL && EVP_MAC_update(mac, (const unsigned char *)data, size) &&
             EVP_MAC_final(mac, out, &length, 16) && length == 16;
    EVP_MAC_CTX_free(mac);
    if (!ok)
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL's BLAKE2b failed");
    return ok ? 0 : -1;
}

/* Folding tallies into buckets: one call's worth. */
typedef struct {
    Py_ssize_t buckets, tallies;
    PyObject *kept; /* str -> (bucket, weight): the slots kept for keys that recur */
    EVP_MAC_CTX *keyed;
    unsigned long long *sums; /* N_TALLIES × buckets residues */
} Folder;

/* A folder of ``tallies`` tallies of ``buckets`` buckets, keyed with ``secret``: 0, or -1 with
 * an error set. */
static int
folder_open(Folder *f, PyObject *secret, Py_ssize_t buckets, PyObject *kept, Py_ssize_t tallies)
{
    f->keyed = NULL;
    f->sums = NULL;
    f->buckets = buckets;
    f->tallies = tallies;
    f->kept = kept;
    if (!PyBytes_Check(secret) || PyBytes_GET_SIZE(secret) < 1 || PyBytes_GET_SIZE(secret) > 64 ||
        buckets <= 0 || buckets > PY_SSIZE_T_MAX / tallies / (Py_ssize_t)sizeof *f->sums ||
        !PyDict_Check(kept)) {
        PyErr_SetString(PyExc_ValueError, "a secret of 1 to 64 bytes, a number of buckets that "
                                          "can be held, a dict of slots");
        return -1;
    }
    f->keyed = keyed_blake2b_new(PyBytes_AS_STRING(secret), (size_t)PyBytes_GET_SIZE(secret));
    if (f->keyed == NULL)
        return -1;
    f->sums = PyMem_Calloc((size_t)(tallies * buckets), sizeof *f->sums);
    if (f->sums == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static void
folder_close(Folder *f)
{
    EVP_MAC_CTX_free(f->keyed);
    PyMem_Free(f->sums);
    f->keyed = NULL;
    f->sums = NULL;
}

/* The slot of ``key`` (a str): from the kept slots when ``keep`` and it is there, else derived
 * from its keyed BLAKE2b (audit.tally.slot) and, when ``keep``, kept. 0, or -1 on error. */
static int
slot_of(Folder *f, PyObject *key, int keep, Py_ssize_t *bucket, unsigned long long *weight)
{
    if (keep) {
        PyObject *found = PyDict_GetItemWithError(f->kept, key);
        if (found != NULL) {
            if (!PyTuple_CheckExact(found) || PyTuple_GET_SIZE(found) != 2) {
                PyErr_SetString(PyExc_TypeError, "a kept slot is not (bucket, weight)");
                return -1;
            }
            *bucket = PyLong_AsSsize_t(PyTuple_GET_ITEM(found, 0));
            *weight = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(found, 1));
            if (PyErr_Occurred())
                return -1;
            if (*bucket < 0 || *bucket >= f->buckets) {
                PyErr_SetString(PyExc_ValueError, "a kept slot is out of range");
                return -1;
            }
            return 0;
        }
        if (PyErr_Occurred())
            return -1;
    }
    Py_ssize_t size;
    const char *utf8 = PyUnicode_AsUTF8AndSize(key, &size);
    unsigned char d[16];
    if (utf8 == NULL || keyed_blake2b(f->keyed, utf8, (size_t)size, d) < 0)
        return -1;
    unsigned long long high = 0, low = 0;
    for (int i = 0; i < 8; i++) {
        high = high << 8 | d[i];
        low = low << 8 | d[8 + i];
    }
    *bucket = (Py_ssize_t)(high % (unsigned long long)f->buckets);
    *weight = low % MERSENNE_61;
    if (!keep)
        return 0;
    PyObject *slot = Py_BuildValue("(nK)", *bucket, *weight);
    int stored = slot == NULL ? -1 : PyDict_SetItem(f->kept, key, slot);
    Py_XDECREF(slot);
    return stored;
}

/* F[bucket] += weight × value (a residue) in one tally. */
static void
fold_in(Folder *f, int tally, Py_ssize_t bucket, unsigned long long weight,
        unsigned long long value)
{
    unsigned long long *sum = &f->sums[tally * f->buckets + bucket];
    *sum = mod_p((unsigned __int128)*sum + (unsigned __int128)weight * value);
}

/* Fold ``value`` under ``key`` into one tally: 0, or -1 on error. */
static int
fold_key(Folder *f, int tally, PyObject *key, unsigned long long value)
{
    Py_ssize_t bucket;
    unsigned long long weight;
    int keep = tally == T_BALANCE || tally == T_COVER || tally == T_PENDING;
    if (slot_of(f, key, keep, &bucket, &weight) < 0)
        return -1;
    fold_in(f, tally, bucket, weight, value);
    return 0;
}

/* The ``n`` tallies from ``first`` as dicts {bucket: F[bucket]}, without the zero buckets (as
 * audit.tally._fold_python gives them): a new tuple, or NULL. */
static PyObject *
folder_result(Folder *f, int first, int n)
{
    PyObject *out = PyTuple_New(n);
    for (int t = 0; out != NULL && t < n; t++) {
        PyObject *folded = PyDict_New();
        if (folded == NULL) {
            Py_CLEAR(out);
            break;
        }
        PyTuple_SET_ITEM(out, t, folded);
        const unsigned long long *sums = &f->sums[(first + t) * f->buckets];
        for (Py_ssize_t b = 0; b < f->buckets; b++) {
            if (sums[b] == 0)
                continue;
            PyObject *bucket = PyLong_FromSsize_t(b);
            PyObject *total = PyLong_FromUnsignedLongLong(sums[b]);
            int stored = bucket == NULL || total == NULL ? -1
                                                          : PyDict_SetItem(folded, bucket, total);
            Py_XDECREF(bucket);
            Py_XDECREF(total);
            if (stored < 0) {
                Py_CLEAR(out);
                break;
            }
        }
    }
    return out;
}

/* A posting that passed its checks, held until the whole entry has. */
typedef struct {
    PyObject *account; /* borrowed from the entry */
    long long amount;
    PyObject *parsed; /* (is euro, member or None, is pending), a new reference */
} Posting;

typedef struct {
    PyObject *lot; /* borrowed from the entry, as are its values */
    PyObject *values[LOT_KEYS];
    long long state;
} Lot;

/* Append the JSON orjson writes for ``value`` to ``out`` (at most ``room`` bytes): the length
 * written, or -1 when the value is not one written here (then orjson writes it). Text without
 * a quote, backslash or control character is written as its UTF-8 between quotes, as orjson
 * writes it; integers within 64 bits in decimal; null, true and false. */
static Py_ssize_t
plain_json_of(PyObject *value, char *out, Py_ssize_t room)
{
    if (PyUnicode_CheckExact(value)) {
        Py_ssize_t size;
        const char *utf8 = PyUnicode_AsUTF8AndSize(value, &size);
        if (utf8 == NULL) {
            PyErr_Clear(); /* orjson says what is wrong with it */
            return -1;
        }
        if (size + 2 > room)
            return -1;
        unsigned char low = 0xFF, quote = 0;
        for (Py_ssize_t i = 0; i < size; i++) {
            unsigned char c = (unsigned char)utf8[i];
            low = c < low ? c : low;
            quote |= (c == '"') | (c == '\\');
        }
        if (low < 0x20 || quote)
            return -1;
        out[0] = '"';
        memcpy(out + 1, utf8, (size_t)size);
        out[size + 1] = '"';
        return size + 2;
    }
    if (PyLong_CheckExact(value)) {
        int overflow = 0;
        long long number = PyLong_AsLongLongAndOverflow(value, &overflow);
        if (overflow || (number == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            return -1;
        }
        char digits[24];
        int length = snprintf(digits, sizeof digits, "%lld", number);
        if (length <= 0 || length > room)
            return -1;
        memcpy(out, digits, (size_t)length);
        return length;
    }
    const char *word = value == Py_None ? "null"
                       : value == Py_True ? "true"
                       : value == Py_False ? "false"
                                           : NULL;
    if (word == NULL || (Py_ssize_t)strlen(word) > room)
        return -1;
    memcpy(out, word, strlen(word));
    return (Py_ssize_t)strlen(word);
}

/* audit.leafscan.lot_terms for a lot whose members have passed their checks (``values`` in
 * sorted order): the first 8 bytes, as a big-endian integer, of SHA-256 of 0x02 ‖ the orjson
 * bytes of [opened by, values...], into *terms. The bytes are written here when every value is
 * plain (plain_json_of), else by orjson; should orjson refuse them, the Python function decides.
 * 0, or -1 on error. */
#define TERMS_PREFIX 2
#define TERMS_ROOM 1024
static int
terms_of(PyObject *opened_by, PyObject *lot, PyObject **values, unsigned long long *terms)
{
    char text[TERMS_ROOM];
    Py_ssize_t at = 0;
    PyObject *items[1 + LOT_KEYS] = {opened_by};
    memcpy(items + 1, values, sizeof(PyObject *) * LOT_KEYS);
    text[at++] = '[';
    for (int i = 0; i < 1 + LOT_KEYS && at > 0; i++) {
        if (i > 0)
            text[at++] = ',';
        Py_ssize_t written = plain_json_of(items[i], text + at, TERMS_ROOM - 2 - at);
        at = written < 0 ? -1 : at + written;
    }
    unsigned char digest[32];
    if (at > 0) {
        text[at++] = ']';
        if (sha256_of(TERMS_PREFIX, text, (size_t)at, digest) < 0)
            return -1;
    }
    else {
        PyObject *tuple = PyTuple_New(1 + LOT_KEYS);
        if (tuple == NULL)
            return -1;
        for (int i = 0; i < 1 + LOT_KEYS; i++) {
            Py_INCREF(items[i]);
            PyTuple_SET_ITEM(tuple, i, items[i]);
        }
        PyObject *data = PyObject_CallOneArg(dumps, tuple);
        Py_DECREF(tuple);
        if (data == NULL) {
            if (!PyErr_ExceptionMatches(encode_error))
                return -1;
            PyErr_Clear();
            PyObject *value = PyObject_CallFunctionObjArgs(lot_terms, opened_by, lot, NULL);
            *terms = value == NULL ? 0 : PyLong_AsUnsignedLongLong(value);
            Py_XDECREF(value);
            return PyErr_Occurred() ? -1 : 0;
        }
        int failed = sha256_of(TERMS_PREFIX, PyBytes_AS_STRING(data),
                               (size_t)PyBytes_GET_SIZE(data), digest);
        Py_DECREF(data);
        if (failed)
            return -1;
    }
    unsigned long long value = 0;
    for (int i = 0; i < 8; i++)
        value = value << 8 | digest[i];
    *terms = value;
    return 0;
}

/* Whether ``name`` is a well-formed account: its parse, a new reference, or NULL with no error
 * set when it is not one. */
static PyObject *
account_of(PyObject *name)
{
    PyObject *parsed = PyDict_GetItemWithError(accounts, name);
    if (parsed != NULL && parsed != Py_None) {
        Py_INCREF(parsed);
        return parsed;
    }
    if (PyErr_Occurred())
        return NULL;
    parsed = PyObject_CallOneArg(parse_account, name);
    if (parsed == Py_None) {
        Py_DECREF(parsed);
        return NULL;
    }
    if (parsed != NULL && !(PyTuple_CheckExact(parsed) && PyTuple_GET_SIZE(parsed) == 3)) {
        Py_DECREF(parsed);
        PyErr_SetString(PyExc_TypeError, "an account's parse is not a 3-tuple");
        return NULL;
    }
    return parsed;
}

/* Check an entry body and, when it passes every check, fold its effects into the tallies.
 * Returns 1 (tallied), 0 (take the fallback; nothing tallied) or -1 (error). */
static int
entry(PyObject *body, PyObject *kind, Folder *folder)
{
    PyObject *f[ENTRY_KEYS];
    Posting postings[MAX_HELD];
    Lot lots[MAX_HELD];
    Py_ssize_t n_postings = 0, n_lots = 0;
    int result = members(body, entry_keys, ENTRY_KEYS, f);
    if (result <= 0)
        return result;
    result = PyObject_RichCompareBool(f[B_KIND], kind, Py_EQ);
    if (result <= 0)
        return result;
    PyObject *list_postings = f[B_POSTINGS], *opened = f[B_OPENED], *moves = f[B_MOVES];
    PyObject *released = f[B_RELEASED], *reason = f[B_REASON];
    if (!(is_uuid(f[B_ID]) && PyList_CheckExact(list_postings) &&
          PyList_GET_SIZE(list_postings) >= 2 && PyList_GET_SIZE(list_postings) <= MAX_HELD &&
          PyList_CheckExact(opened) && PyList_GET_SIZE(opened) <= MAX_HELD &&
          PyList_CheckExact(moves) && PyList_CheckExact(released)))
        return 0;
    result = PyObject_RichCompareBool(kind, adjustment_kind, Py_EQ);
    if (result < 0)
        return -1;
    if (result) {
        if (!PyUnicode_CheckExact(reason))
            return 0;
        PyObject *stripped = PyObject_CallMethod(reason, "strip", NULL);
        if (stripped == NULL)
            return -1;
        Py_ssize_t length = PyUnicode_GET_LENGTH(stripped);
        Py_DECREF(stripped);
        if (length == 0)
            return 0;
    }
    result = 0;
    long long points = 0, euros = 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(list_postings); i++) {
        PyObject *p[2]; /* account, amount */
        PyObject *keys[2] = {key_account, key_amount};
        int shaped = members(PyList_GET_ITEM(list_postings, i), keys, 2, p);
        if (shaped <= 0) {
            result = shaped;
            goto done;
        }
        int ok = PyUnicode_CheckExact(p[0]);
        long long amount = exact_int(p[1], &ok);
        if (!ok || amount == 0)
            goto done;
        PyObject *parsed = account_of(p[0]);
        if (parsed == NULL) {
            result = PyErr_Occurred() ? -1 : 0;
            goto done;
        }
        postings[n_postings++] = (Posting){p[0], amount, parsed};
        int is_euro = PyObject_IsTrue(PyTuple_GET_ITEM(parsed, 0));
        if (is_euro < 0) {
            result = -1;
            goto done;
        }
        if (__builtin_add_overflow(is_euro ? euros : points, amount, is_euro ? &euros : &points))
            goto done;
    }
    if (points || euros)
        goto done;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(opened); i++) {
        PyObject *lot = PyList_GET_ITEM(opened, i), *l[LOT_KEYS];
        int shaped = members(lot, lot_keys, LOT_KEYS, l);
        if (shaped <= 0) {
            result = shaped;
            goto done;
        }
        int ok = is_uuid(l[L_ID]);
        long long amount = exact_int(l[L_AMOUNT], &ok);
        if (!ok || amount <= 0)
            goto done;
        lots[n_lots].lot = lot;
        memcpy(lots[n_lots].values, l, sizeof l);
        lots[n_lots++].state = 2 * amount + (l[L_UNTIL] != Py_None);
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(moves); i++) {
        PyObject *m[2]; /* delta, lot (sorted) */
        PyObject *keys[2] = {key_delta, key_lot};
        int shaped = members(PyList_GET_ITEM(moves, i), keys, 2, m);
        if (shaped <= 0) {
            result = shaped;
            goto done;
        }
        int ok = is_uuid(m[1]);
        long long delta = exact_int(m[0], &ok);
        if (!ok || delta == 0)
            goto done;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(released); i++)
        if (!is_uuid(PyList_GET_ITEM(released, i)))
            goto done;

    /* Every check passed: the entry's effects. */
    result = -1;
    for (Py_ssize_t i = 0; i < n_postings; i++) {
        Posting *p = &postings[i];
        unsigned long long amount = residue_of(p->amount);
        if (fold_key(folder, T_BALANCE, p->account, amount) < 0)
            goto done;
        PyObject *member = PyTuple_GET_ITEM(p->parsed, 1);
        if (member != Py_None) {
            int is_pending = PyObject_IsTrue(PyTuple_GET_ITEM(p->parsed, 2));
            if (is_pending < 0 ||
                fold_key(folder, is_pending ? T_PENDING : T_COVER, member, amount) < 0)
                goto done;
        }
    }
    for (Py_ssize_t i = 0; i < n_lots; i++) { /* one slot for the lot's two tallies */
        Py_ssize_t bucket;
        unsigned long long weight, terms;
        if (terms_of(f[B_ID], lots[i].lot, lots[i].values, &terms) < 0 ||
            slot_of(folder, lots[i].values[L_ID], 0, &bucket, &weight) < 0)
            goto done;
        fold_in(folder, T_TERMS, bucket, weight, terms % MERSENNE_61);
        fold_in(folder, T_STATE, bucket, weight, residue_of(lots[i].state));
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(moves); i++) {
        PyObject *move = PyList_GET_ITEM(moves, i);
        int ok = 1;
        long long delta = exact_int(PyDict_GetItem(move, key_delta), &ok);
        if (fold_key(folder, T_STATE, PyDict_GetItem(move, key_lot), residue_of(2 * delta)) < 0)
            goto done;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(released); i++)
        if (fold_key(folder, T_STATE, PyList_GET_ITEM(released, i), residue_of(-1)) < 0)
            goto done;
    result = 1;
done:
    for (Py_ssize_t i = 0; i < n_postings; i++)
        Py_DECREF(postings[i].parsed);
    return result;
}

/* Check an audit event's body: an object of the envelope's kind with a UUID id. */
static int
audit_event(PyObject *body, PyObject *kind)
{
    PyObject *body_kind = PyDict_GetItemWithError(body, key_kind);
    if (body_kind == NULL)
        return PyErr_Occurred() ? -1 : 0;
    int same = PyObject_RichCompareBool(body_kind, kind, Py_EQ);
    if (same <= 0)
        return same;
    PyObject *event_id = PyDict_GetItemWithError(body, key_id);
    if (event_id == NULL)
        return PyErr_Occurred() ? -1 : 0;
    return is_uuid(event_id);
}

/* The 32 bytes of a 64-digit lowercase hex string (checked by the caller). */
static void
from_hex(PyObject *text, unsigned char *out)
{
    const unsigned char *p = PyUnicode_1BYTE_DATA(text);
    for (int i = 0; i < 32; i++) {
        unsigned char hi = p[2 * i], lo = p[2 * i + 1];
        out[i] = (unsigned char)(((hi <= '9' ? hi - '0' : hi - 'a' + 10) << 4) |
                                 (lo <= '9' ? lo - '0' : lo - 'a' + 10));
    }
}

PyDoc_STRVAR(count_lines_doc,
             "count_lines(block, end) -> int\n\n"
             "audit.bundle._count_lines in C: the newlines in block[:end].");

static PyObject *
count_lines(PyObject *module, PyObject *args)
{
    Py_buffer block;
    Py_ssize_t end, count = 0;
    if (!PyArg_ParseTuple(args, "y*n", &block, &end))
        return NULL;
    if (end < 0 || end > block.len) {
        PyBuffer_Release(&block);
        PyErr_SetString(PyExc_ValueError, "end beyond the block");
        return NULL;
    }
    const char *at = block.buf, *stop = at + end;
    while (at < stop && (at = memchr(at, '\n', (size_t)(stop - at))) != NULL) {
        count++;
        at++;
    }
    PyBuffer_Release(&block);
    return PyLong_FromSsize_t(count);
}

PyDoc_STRVAR(subtree_root_doc,
             "subtree_root(hashes) -> bytes\n\n"
             "The root of a complete Merkle subtree (RFC 6962) over the 2^k leaf hashes "
             "``hashes`` holds, 32 bytes each: every level hashed in place.");

static PyObject *
subtree_root(PyObject *module, PyObject *args)
{
    Py_buffer hashes;
    if (!PyArg_ParseTuple(args, "y*", &hashes))
        return NULL;
    Py_ssize_t count = hashes.len / 32;
    PyObject *root = NULL;
    if (hashes.len % 32 != 0 || count == 0 || (count & (count - 1)) != 0) {
        PyErr_SetString(PyExc_ValueError, "a power of two of 32-byte hashes");
        PyBuffer_Release(&hashes);
        return NULL;
    }
    unsigned char *level = PyMem_Malloc((size_t)hashes.len);
    if (level == NULL) {
        PyBuffer_Release(&hashes);
        return PyErr_NoMemory();
    }
    memcpy(level, hashes.buf, (size_t)hashes.len);
    PyBuffer_Release(&hashes);
    for (; count > 1; count /= 2)
        for (Py_ssize_t i = 0; i < count / 2; i++)
            if (sha256_of(1, level + 64 * i, 64, level + 32 * i) < 0)
                goto done;
    root = PyBytes_FromStringAndSize((const char *)level, 32);
done:
    PyMem_Free(level);
    return root;
}

/* -- a parser for canonical bytes only ------------------------------------------------------ *
 *
 * parse_canonical() reads a leaf the way orjson would, into the same dicts, lists, strings and
 * integers, but only when the bytes are, as they stand, the canonical form of what they hold
 * (docs/VERIFYING.md §2): no whitespace; in every object the keys in strictly increasing order;
 * strings without an escape or a control character, in UTF-8 (Python's strict decoder says) and
 * in NFC; integers written plainly (no "-0", no leading zero, no fraction, no exponent), within
 * ±(2^53 − 1); true, false and null. Anything else, even valid JSON, is a doubt: NULL with no
 * error set, and the leaf goes to the fallback, which names what is wrong. So this parser never
 * has to decide what unusual bytes mean, only to recognise the one form a leaf should have;
 * tests/unit/test_leafscan.py holds its verdicts to the leaf-by-leaf code's on mutated leaves.
 *
 * Why not orjson, as before: per leaf, orjson's parse, then two more passes to prove the form
 * (the bytes, then the values), cost more than reading the bytes once here. Keys recur from
 * leaf to leaf, so their str objects are kept in a small table and shared. */

typedef struct {
    const unsigned char *at, *end;
} Cursor;

#define KEY_SLOTS 512
#define KEY_MAX 48
static PyObject *key_table[KEY_SLOTS];

/* The str of an ASCII key, from the table when it was met before (a new reference). */
static PyObject *
ascii_key(const unsigned char *p, Py_ssize_t length)
{
    if (length > KEY_MAX)
        return PyUnicode_FromKindAndData(PyUnicode_1BYTE_KIND, p, length);
    unsigned h = (unsigned)length * 131u;
    for (Py_ssize_t i = 0; i < length; i++)
        h = h * 31u + p[i];
    PyObject **slot = &key_table[h % KEY_SLOTS];
    PyObject *known = *slot;
    if (known != NULL && PyUnicode_GET_LENGTH(known) == length &&
        memcmp(PyUnicode_1BYTE_DATA(known), p, (size_t)length) == 0) {
        Py_INCREF(known);
        return known;
    }
    PyObject *made = PyUnicode_New(length, 127);
    if (made == NULL)
        return NULL;
    memcpy(PyUnicode_1BYTE_DATA(made), p, (size_t)length);
    Py_INCREF(made);
    Py_XSETREF(*slot, made);
    return made;
}

/* What a value is read for. Values the checks here never read are only checked for their
 * form, and no object is made for them: the body's attributes and the fields that no rule of
 * audit.leafscan looks at (the fallback reads them all when a leaf goes its way). */
enum { SKIP, BUILD, BUILD_BODY };

static const char *unread_members[] = {
    "attributes", "booked_at", "business_time", "credential", "idempotency_key", "partner",
    "refers_to"};

static int
is_unread_member(const unsigned char *key, Py_ssize_t length)
{
    for (size_t i = 0; i < sizeof unread_members / sizeof *unread_members; i++)
        if ((size_t)length == strlen(unread_members[i]) &&
            memcmp(key, unread_members[i], (size_t)length) == 0)
            return 1;
    return 0;
}

/* A string at c->at (its opening quote): a new reference (Py_None when ``build`` is SKIP),
 * NULL when in doubt or on error. ``raw``/``raw_length`` get its bytes between the quotes. */
static PyObject *
parse_string(Cursor *c, int build, int is_key, const unsigned char **raw,
             Py_ssize_t *raw_length)
{
    const unsigned char *start = c->at + 1;
    const unsigned char *close = memchr(start, '"', (size_t)(c->end - start));
    if (close == NULL)
        return NULL;
    Py_ssize_t length = close - start;
    unsigned char low = 0xFF, high = 0, escape = 0;
    for (Py_ssize_t i = 0; i < length; i++) { /* no early exit: the compiler vectorises it */
        low = start[i] < low ? start[i] : low;
        high |= start[i];
        escape |= start[i] == '\\';
    }
    /* A control character, which canonical text escapes; or an escape, which canonical_envelope
     * sends the fallback's way before this parser sees the line (and without which the quote
     * found above is the string's end). */
    if (low < 0x20 || escape)
        return NULL;
    c->at = close + 1;
    *raw = start;
    *raw_length = length;
    if (high < 0x80) {
        if (build == SKIP)
            return Py_NewRef(Py_None);
        if (is_key)
            return ascii_key(start, length);
        PyObject *text = PyUnicode_New(length, 127);
        if (text != NULL)
            memcpy(PyUnicode_1BYTE_DATA(text), start, (size_t)length);
        return text;
    }
    PyObject *text = PyUnicode_DecodeUTF8((const char *)start, length, NULL);
    if (text == NULL) {
        if (PyErr_ExceptionMatches(PyExc_UnicodeDecodeError))
            PyErr_Clear();
        return NULL;
    }
    int normal = in_nfc(text);
    if (normal <= 0) {
        Py_DECREF(text);
        return NULL;
    }
    if (build == SKIP)
        Py_SETREF(text, Py_NewRef(Py_None));
    return text;
}

/* An integer at c->at, as canonical JSON writes it: a new reference (Py_None when ``build`` is
 * SKIP), NULL when in doubt. */
static PyObject *
parse_integer(Cursor *c, int build)
{
    const unsigned char *p = c->at;
    int negative = *p == '-';
    p += negative;
    if (p == c->end || *p < '0' || *p > '9' || (*p == '0' && (negative || (p + 1 < c->end &&
                                                                           p[1] >= '0' &&
                                                                           p[1] <= '9'))))
        return NULL; /* no digit, "-0", or a leading zero */
    long long value = 0;
    const unsigned char *first = p;
    while (p < c->end && *p >= '0' && *p <= '9') {
        if (p - first >= 16) /* 2^53 − 1 has 16 digits */
            return NULL;
        value = value * 10 + (*p++ - '0');
    }
    if (value > MAX_SAFE_INTEGER ||
        (p < c->end && (*p == '.' || *p == 'e' || *p == 'E')))
        return NULL;
    c->at = p;
    return build == SKIP ? Py_NewRef(Py_None) : PyLong_FromLongLong(negative ? -value : value);
}

static PyObject *parse_value(Cursor *c, int build);

/* An object at c->at. In a BUILD_BODY object (a leaf's entry) the members no check here reads
 * are parsed as SKIP, and held as None. */
static PyObject *
parse_object(Cursor *c, int build)
{
    PyObject *object = build == SKIP ? Py_NewRef(Py_None) : PyDict_New();
    if (object == NULL)
        return NULL;
    c->at++;
    if (c->at < c->end && *c->at == '}') {
        c->at++;
        return object;
    }
    const unsigned char *before = NULL;
    Py_ssize_t before_length = 0;
    while (c->at < c->end && *c->at == '"') {
        const unsigned char *raw;
        Py_ssize_t length;
        PyObject *key = parse_string(c, build == SKIP ? SKIP : BUILD, 1, &raw, &length);
        if (key == NULL)
            goto fail;
        if (before != NULL) { /* strictly after the key before: UTF-8 sorts by code point */
            Py_ssize_t common = length < before_length ? length : before_length;
            int order = memcmp(before, raw, (size_t)common);
            if (order > 0 || (order == 0 && before_length >= length)) {
                Py_DECREF(key);
                goto fail;
            }
        }
        before = raw;
        before_length = length;
        int inner = build == SKIP || (build == BUILD_BODY && is_unread_member(raw, length))
                        ? SKIP
                        : BUILD;
        if (build == BUILD && length == 5 && memcmp(raw, "entry", 5) == 0)
            inner = BUILD_BODY; /* the envelope's entry (any other "entry" is none the worse) */
        PyObject *value = NULL;
        if (c->at < c->end && *c->at == ':') {
            c->at++;
            value = parse_value(c, inner);
        }
        int stored = value == NULL ? -1 : build == SKIP ? 0 : PyDict_SetItem(object, key, value);
        Py_DECREF(key);
        Py_XDECREF(value);
        if (stored < 0 || c->at == c->end)
            goto fail;
        if (*c->at == '}') {
            c->at++;
            return object;
        }
        if (*c->at++ != ',')
            goto fail;
    }
fail:
    Py_DECREF(object);
    return NULL;
}

static PyObject *
parse_array(Cursor *c, int build)
{
    PyObject *array = build == SKIP ? Py_NewRef(Py_None) : PyList_New(0);
    if (array == NULL)
        return NULL;
    c->at++;
    if (c->at < c->end && *c->at == ']') {
        c->at++;
        return array;
    }
    while (c->at < c->end) {
        PyObject *item = parse_value(c, build == SKIP ? SKIP : BUILD);
        int appended = item == NULL ? -1 : build == SKIP ? 0 : PyList_Append(array, item);
        Py_XDECREF(item);
        if (appended < 0 || c->at == c->end)
            break;
        if (*c->at == ']') {
            c->at++;
            return array;
        }
        if (*c->at++ != ',')
            break;
    }
    Py_DECREF(array);
    return NULL;
}

static PyObject *
parse_literal(Cursor *c, const char *word, size_t length, PyObject *value)
{
    if ((size_t)(c->end - c->at) < length || memcmp(c->at, word, length) != 0)
        return NULL;
    c->at += length;
    return Py_NewRef(value);
}

/* Any value at c->at: a new reference (Py_None for any value read as SKIP), NULL when in doubt
 * (no error set) or on error. Depth is bounded by the caller, which counts the brackets
 * first. */
static PyObject *
parse_value(Cursor *c, int build)
{
    if (c->at == c->end)
        return NULL;
    const unsigned char *raw;
    Py_ssize_t length;
    switch (*c->at) {
    case '{':
        return parse_object(c, build);
    case '[':
        return parse_array(c, build);
    case '"':
        return parse_string(c, build, 0, &raw, &length);
    case 't':
        return parse_literal(c, "true", 4, Py_True);
    case 'f':
        return parse_literal(c, "false", 5, Py_False);
    case 'n':
        return parse_literal(c, "null", 4, Py_None);
    default:
        return parse_integer(c, build);
    }
}

/* The envelope ``p`` holds when it is canonical as above: a new reference, or NULL (in doubt:
 * no error set; on a real error: set). The entry's unread members hold None. */
static PyObject *
parse_canonical(const char *p, Py_ssize_t size)
{
    Cursor c = {(const unsigned char *)p, (const unsigned char *)p + size};
    if (size == 0 || *p != '{')
        return NULL;
    PyObject *object = parse_object(&c, BUILD);
    if (object != NULL && c.at != c.end)
        Py_CLEAR(object);
    return object;
}

/* The parsed envelope when ``line`` is canonical (parse_canonical; a key beyond U+FFFF is
 * left to wide_text_ok, since UTF-16 sorts it differently), else NULL (with an error set only
 * on a real error). An escape line ('{"index":') and any backslash go to the fallback. */
static PyObject *
canonical_envelope(PyObject *line)
{
    const char *p = PyBytes_AS_STRING(line);
    Py_ssize_t size = PyBytes_GET_SIZE(line), brackets = 0;
    int beyond_bmp = 0;
    if ((size >= 9 && memcmp(p, "{\"index\":", 9) == 0) || memchr(p, '\\', (size_t)size))
        return NULL;
    for (Py_ssize_t i = 0; i < size; i++) { /* no early exit: the compiler vectorises it */
        unsigned char c = (unsigned char)p[i];
        brackets += (c == '{') | (c == '[');
        beyond_bmp |= c >= 0xF0;
    }
    if (brackets > max_depth)
        return NULL;
    PyObject *envelope = parse_canonical(p, size);
    if (envelope == NULL)
        return NULL;
    int same = 1;
    if (beyond_bmp) { /* keys beyond U+FFFF sort differently in UTF-16 */
        PyObject *verdict = PyObject_CallOneArg(wide_text_ok, line);
        same = verdict == NULL ? -1 : PyObject_IsTrue(verdict);
        Py_XDECREF(verdict);
    }
    if (same <= 0) {
        Py_DECREF(envelope);
        return NULL;
    }
    return envelope;
}

/* -- a chunk taken as one run (audit.leafscan._as_run) -------------------------------------- *
 *
 * While every leaf so far was taken here and they hold together (one log, consecutive indices,
 * each prev the hash of the leaf before, committed_at never going back), no tuple is made per
 * leaf: only the leaf hashes, kind letters, stamps and kinds are kept. When the run breaks, the
 * tuples of the leaves held so far are made after all, in order, and the scan goes on as
 * before. */

typedef struct {
    int holds;
    Py_ssize_t count, first_line;
    long long first;
    PyObject *log;              /* the first leaf's, a new reference */
    unsigned char first_prev[32];
    unsigned char *hashes;      /* 32 per leaf held */
    char *letters;              /* 'E' an entry, 'A' an audit event */
    PyObject **stamps, **kinds; /* new references, one per leaf held */
} RunState;

static int
run_open(RunState *r, Py_ssize_t capacity, Py_ssize_t first_line, int wanted)
{
    memset(r, 0, sizeof *r);
    r->holds = wanted;
    r->first_line = first_line;
    size_t n = (size_t)(capacity ? capacity : 1);
    r->hashes = PyMem_Malloc(32 * n);
    r->letters = PyMem_Malloc(n);
    r->stamps = PyMem_Calloc(n, sizeof(PyObject *));
    r->kinds = PyMem_Calloc(n, sizeof(PyObject *));
    if (!r->hashes || !r->letters || !r->stamps || !r->kinds) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static void
run_close(RunState *r)
{
    for (Py_ssize_t i = 0; i < r->count; i++) {
        Py_XDECREF(r->stamps[i]);
        Py_XDECREF(r->kinds[i]);
    }
    Py_XDECREF(r->log);
    PyMem_Free(r->hashes);
    PyMem_Free(r->letters);
    PyMem_Free(r->stamps);
    PyMem_Free(r->kinds);
    memset(r, 0, sizeof *r);
}

/* One leaf's tuple (audit.leafscan.Scanned), appended to ``scanned``: 0, or -1 on error. */
static int
append_scanned(PyObject *scanned, Py_ssize_t line_no, PyObject *log, PyObject *index,
               const unsigned char *prev, const unsigned char *hash, PyObject *stamp,
               PyObject *kind)
{
    PyObject *number = PyLong_FromSsize_t(line_no);
    PyObject *prev_bytes = PyBytes_FromStringAndSize((const char *)prev, 32);
    PyObject *hash_bytes = PyBytes_FromStringAndSize((const char *)hash, 32);
    PyObject *item = number == NULL || prev_bytes == NULL || hash_bytes == NULL
                         ? NULL
                         : PyTuple_Pack(9, number, log, index, prev_bytes, hash_bytes, stamp, kind,
                                        Py_None, Py_None);
    int result = item == NULL ? -1 : PyList_Append(scanned, item);
    Py_XDECREF(item);
    Py_XDECREF(hash_bytes);
    Py_XDECREF(prev_bytes);
    Py_XDECREF(number);
    return result;
}

/* The run breaks: the tuples of the leaves it held, and their positions in ``taken``. */
static int
run_break(RunState *r, PyObject *scanned, PyObject *taken)
{
    if (!r->holds)
        return 0;
    r->holds = 0;
    for (Py_ssize_t i = 0; i < r->count; i++) {
        PyObject *index = PyLong_FromLongLong(r->first + i);
        PyObject *position = index == NULL ? NULL : PyLong_FromSsize_t(i);
        int failed = position == NULL ||
                     append_scanned(scanned, r->first_line + i, r->log, index,
                                    i ? r->hashes + 32 * (i - 1) : r->first_prev,
                                    r->hashes + 32 * i, r->stamps[i], r->kinds[i]) < 0 ||
                     PyList_Append(taken, position) < 0;
        Py_XDECREF(index);
        Py_XDECREF(position);
        if (failed)
            return -1;
    }
    return 0;
}

/* A leaf this loop took: held by the run when it continues it, else its tuple appended. */
static int
run_take(RunState *r, PyObject *scanned, PyObject *taken, Py_ssize_t position, PyObject *log,
         PyObject *index, long long index_value, const unsigned char *prev,
         const unsigned char *hash, PyObject *stamp, PyObject *kind, char letter)
{
    if (r->holds && r->count > 0) {
        int same_log = PyUnicode_Compare(log, r->log);
        int later = same_log == 0 ? PyObject_RichCompareBool(stamp, r->stamps[r->count - 1], Py_GE)
                                  : 0;
        if ((same_log == -1 || later < 0) && PyErr_Occurred())
            return -1;
        if (!(same_log == 0 && later && index_value == r->first + r->count &&
              memcmp(prev, r->hashes + 32 * (r->count - 1), 32) == 0) &&
            run_break(r, scanned, taken) < 0)
            return -1;
    }
    if (r->holds) {
        if (r->count == 0) {
            r->log = Py_NewRef(log);
            r->first = index_value;
            memcpy(r->first_prev, prev, 32);
        }
        memcpy(r->hashes + 32 * r->count, hash, 32);
        r->letters[r->count] = letter;
        r->stamps[r->count] = Py_NewRef(stamp);
        r->kinds[r->count] = Py_NewRef(kind);
        r->count++;
        return 0;
    }
    PyObject *at = PyLong_FromSsize_t(position);
    int result = at == NULL ? -1 : PyList_Append(taken, at);
    Py_XDECREF(at);
    if (result < 0)
        return -1;
    return append_scanned(scanned, r->first_line + position, log, index, prev, hash, stamp, kind);
}

/* The run, when it held every line: (log, first index, first prev, first stamp, last stamp,
 * hashes, kind letters), a new tuple; None when it did not. */
static PyObject *
run_result(RunState *r, Py_ssize_t lines)
{
    if (!r->holds || r->count == 0 || r->count != lines)
        Py_RETURN_NONE;
    return Py_BuildValue("(OLy#OOy#s#)", r->log, r->first, r->first_prev, (Py_ssize_t)32,
                         r->stamps[0], r->stamps[r->count - 1], r->hashes, 32 * r->count,
                         r->letters, r->count);
}

/* One line: 1 when checked here (held by the run, or its tuple appended to ``scanned``), 0
 * when the fallback must take it, -1 on error. */
static int
scan_line(PyObject *line, Py_ssize_t position, Folder *folder, PyObject *timestamps,
          RunState *run, PyObject *scanned, PyObject *taken)
{
    if (!PyBytes_CheckExact(line))
        return 0;
    PyObject *envelope = canonical_envelope(line);
    if (envelope == NULL)
        return PyErr_Occurred() ? -1 : 0;
    PyObject *e[ENVELOPE_KEYS];
    int result = members(envelope, envelope_keys, ENVELOPE_KEYS, e);
    if (result <= 0)
        goto done;
    int ok = 1;
    long long version = exact_int(e[E_V], &ok), index = exact_int(e[E_INDEX], &ok);
    PyObject *stamp = e[E_STAMP], *kind = e[E_KIND], *body = e[E_ENTRY];
    result = 0;
    if (!(ok && version == envelope_version && index >= 0 && PyUnicode_CheckExact(e[E_LOG]) &&
          PyUnicode_CheckExact(kind) && is_hex(e[E_PREV], 64) && is_hex(e[E_NONCE], 32) &&
          PyDict_CheckExact(body) && PyUnicode_CheckExact(stamp)))
        goto done;
    result = PyDict_Contains(timestamps, stamp);
    if (result == 0) {
        PyObject *known = PyObject_CallFunctionObjArgs(known_stamp, stamp, timestamps, NULL);
        result = known == NULL ? -1 : PyObject_IsTrue(known);
        Py_XDECREF(known);
    }
    if (result <= 0)
        goto done;
    char letter = 'E';
    result = PySet_Contains(entry_kinds, kind);
    if (result > 0)
        result = entry(body, kind, folder);
    else if (result == 0) {
        letter = 'A';
        result = PyObject_RichCompareBool(kind, audit_kind, Py_EQ);
        if (result > 0)
            result = audit_event(body, kind);
    }
    if (result <= 0)
        goto done;
    unsigned char prev[32], hash[32];
    from_hex(e[E_PREV], prev);
    result = -1;
    if (sha256_of(0, PyBytes_AS_STRING(line), (size_t)PyBytes_GET_SIZE(line), hash) == 0 &&
        run_take(run, scanned, taken, position, e[E_LOG], e[E_INDEX], index, prev, hash, stamp,
                 kind, letter) == 0)
        result = 1;
done:
    Py_DECREF(envelope);
    return result;
}

PyDoc_STRVAR(scan_doc,
             "scan(lines, first_line, secret, buckets, kept, timestamps, scanned, fallback, runs) "
             "-> (list[int], tuple[dict[int, int], ...], tuple | None)\n\n"
             "audit.leafscan._scan_python in C, folding as it goes: ``fallback(line, line_no)`` "
             "returns the tuple of a line this loop does not take. Returns the positions of the "
             "leaves it took; what they add to each tally of TALLIES, folded into ``buckets`` "
             "buckets under ``secret`` (the slots of recurring keys kept in ``kept``); and, with "
             "``runs``, the chunk as a run when it forms one (then no tuple is made).");

static PyObject *
scan(PyObject *module, PyObject *args)
{
    PyObject *lines, *secret, *kept, *timestamps, *scanned, *fallback;
    Py_ssize_t first_line, buckets;
    int runs;
    if (!PyArg_ParseTuple(args, "OnSnO!O!O!Op", &lines, &first_line, &secret, &buckets,
                          &PyDict_Type, &kept, &PyDict_Type, &timestamps, &PyList_Type, &scanned,
                          &fallback, &runs))
        return NULL;
    if (loads == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "audit._native.configure() was not called");
        return NULL;
    }
    PyObject *sequence = PySequence_Fast(lines, "lines must be a sequence");
    if (sequence == NULL)
        return NULL;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(sequence);
    Folder folder;
    RunState run;
    PyObject *taken = NULL, *result = NULL;
    int opened = folder_open(&folder, secret, buckets, kept, N_TALLIES);
    if (run_open(&run, count, first_line, runs) < 0 || opened < 0)
        goto done;
    taken = PyList_New(0);
    if (taken == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *line = PySequence_Fast_GET_ITEM(sequence, i);
        int here = scan_line(line, i, &folder, timestamps, &run, scanned, taken);
        if (here < 0)
            goto done;
        if (here)
            continue;
        if (run_break(&run, scanned, taken) < 0)
            goto done;
        PyObject *item = PyObject_CallFunction(fallback, "On", line, first_line + i);
        int appended = item == NULL ? -1 : PyList_Append(scanned, item);
        Py_XDECREF(item);
        if (appended < 0)
            goto done;
    }
    PyObject *folded = folder_result(&folder, 0, N_TALLIES);
    PyObject *whole = folded == NULL ? NULL : run_result(&run, count);
    if (whole != NULL)
        result = PyTuple_Pack(3, taken, folded, whole);
    Py_XDECREF(folded);
    Py_XDECREF(whole);
done:
    run_close(&run);
    folder_close(&folder);
    Py_DECREF(sequence);
    Py_XDECREF(taken);
    return result;
}

/* Where the entry record sits in a leaf's canonical bytes: from after the first "entry": to the
 * last ,"index": (audit.leafscan.body_slice). 0 when the markers are not both there. */
static int
body_bounds(PyObject *line, Py_ssize_t *start, Py_ssize_t *end)
{
    static const char open[] = "\"entry\":", close[] = ",\"index\":";
    const char *p = PyBytes_AS_STRING(line);
    Py_ssize_t size = PyBytes_GET_SIZE(line);
    const char *found = memmem(p, (size_t)size, open, sizeof open - 1);
    if (found == NULL)
        return 0;
    *start = found - p + (Py_ssize_t)(sizeof open - 1);
    for (Py_ssize_t i = size - (Py_ssize_t)(sizeof close - 1); i >= *start; i--)
        if (memcmp(p + i, close, sizeof close - 1) == 0) {
            *end = i;
            return 1;
        }
    return 0;
}

PyDoc_STRVAR(records_doc,
             "records(lines, kinds, first, log_json) -> (entries, events)\n\n"
             "audit.leafscan._records_python in C: the lines entries.jsonl and audit.jsonl "
             "hold for these leaves.");

static PyObject *
records(PyObject *module, PyObject *args)
{
    PyObject *lines, *kinds, *log_json;
    long long first;
    if (!PyArg_ParseTuple(args, "O!ULO!", &PyList_Type, &lines, &kinds, &first, &PyBytes_Type,
                          &log_json))
        return NULL;
    Py_ssize_t count = PyList_GET_SIZE(lines);
    if (first < 0 || first > LLONG_MAX - count) {
        PyErr_SetString(PyExc_ValueError, "indices must be non-negative 64-bit integers");
        return NULL;
    }
    if (PyUnicode_GET_LENGTH(kinds) != count || !PyUnicode_IS_ASCII(kinds)) {
        PyErr_SetString(PyExc_ValueError, "one ASCII kind letter per line");
        return NULL;
    }
    const char *letters = (const char *)PyUnicode_1BYTE_DATA(kinds);
    /* {"index":N,"log":L,"queued":false,"record":B}\n: 9 + digits + 7 + L + 25 + B + 2. */
    Py_ssize_t fixed = 9 + 20 + 7 + PyBytes_GET_SIZE(log_json) + 25 + 2, sizes[2] = {0, 0};
    Py_ssize_t *bounds = PyMem_Malloc(sizeof(Py_ssize_t) * 2 * (size_t)(count ? count : 1));
    if (bounds == NULL)
        return PyErr_NoMemory();
    PyObject *out[2] = {NULL, NULL}, *result = NULL;
    for (Py_ssize_t n = 0; n < count; n++) {
        PyObject *line = PyList_GET_ITEM(lines, n);
        if (!PyBytes_CheckExact(line) || !body_bounds(line, &bounds[2 * n], &bounds[2 * n + 1])) {
            PyErr_SetString(PyExc_ValueError, "a line without an entry record");
            goto done;
        }
        sizes[letters[n] != 'E'] += fixed + bounds[2 * n + 1] - bounds[2 * n];
    }
    char *at[2];
    for (int i = 0; i < 2; i++) {
        out[i] = PyBytes_FromStringAndSize(NULL, sizes[i]);
        if (out[i] == NULL)
            goto done;
        at[i] = PyBytes_AS_STRING(out[i]);
    }
    for (Py_ssize_t n = 0; n < count; n++) {
        int which = letters[n] != 'E';
        char *o = at[which];
        o += sprintf(o, "{\"index\":%lld,\"log\":", first + n);
        memcpy(o, PyBytes_AS_STRING(log_json), (size_t)PyBytes_GET_SIZE(log_json));
        o += PyBytes_GET_SIZE(log_json);
        memcpy(o, ",\"queued\":false,\"record\":", 25);
        o += 25;
        Py_ssize_t length = bounds[2 * n + 1] - bounds[2 * n];
        memcpy(o, PyBytes_AS_STRING(PyList_GET_ITEM(lines, n)) + bounds[2 * n], (size_t)length);
        o += length;
        *o++ = '}';
        *o++ = '\n';
        at[which] = o;
    }
    for (int i = 0; i < 2; i++) /* the index took fewer than 20 digits: trim the spare bytes */
        if (_PyBytes_Resize(&out[i], at[i] - PyBytes_AS_STRING(out[i])) < 0)
            goto done;
    result = PyTuple_Pack(2, out[0], out[1]);
done:
    PyMem_Free(bounds);
    Py_XDECREF(out[0]);
    Py_XDECREF(out[1]);
    return result;
}

/* -- audit.tally.fold_many's inner loop ------------------------------------------------------ */

PyDoc_STRVAR(fold_doc,
             "fold(values, secret, buckets, slots) -> dict[int, int]\n\n"
             "audit.tally._fold_python in C: {bucket: Σ weight × value mod p} over the non-zero "
             "values, zero buckets left out, each key's (bucket, weight) taken from ``slots`` "
             "or derived from its BLAKE2b-128 keyed with ``secret``, and kept there.");

static PyObject *
fold(PyObject *module, PyObject *args)
{
    PyObject *values, *secret, *slots, *out = NULL;
    Py_ssize_t buckets;
    if (!PyArg_ParseTuple(args, "O!SnO!", &PyDict_Type, &values, &secret, &buckets,
                          &PyDict_Type, &slots))
        return NULL;
    Folder folder;
    if (folder_open(&folder, secret, buckets, slots, 1) < 0)
        goto done;
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(values, &pos, &key, &value)) {
        int nonzero = PyObject_IsTrue(value);
        if (nonzero < 0)
            goto done;
        if (!nonzero)
            continue;
        if (!PyLong_Check(value) || !PyUnicode_Check(key)) {
            PyErr_SetString(PyExc_TypeError, "fold() takes str keys and int values");
            goto done;
        }
        Py_ssize_t bucket;
        unsigned long long weight, v = residue(value);
        if ((v == (unsigned long long)-1 && PyErr_Occurred()) ||
            slot_of(&folder, key, 1, &bucket, &weight) < 0)
            goto done;
        fold_in(&folder, 0, bucket, weight, v);
    }
    PyObject *result = folder_result(&folder, 0, 1);
    if (result != NULL) {
        out = Py_NewRef(PyTuple_GET_ITEM(result, 0));
        Py_DECREF(result);
    }
done:
    folder_close(&folder);
    return out;
}

/* -- audit.leafscan._fold_lots_python -------------------------------------------------------- */

static PyObject *key_remaining, *key_member, *key_opened_by, *key_pending, *not_a_lot;

/* One row of lots.jsonl, parsed: 1 when it is a cached lot (folded), 0 when not, -1 on error. */
static int
fold_lot_row(Folder *folder, PyObject *row)
{
    if (!PyDict_CheckExact(row))
        return 0;
    PyObject *remaining = PyDict_GetItemWithError(row, key_remaining);
    PyObject *lot_id = PyDict_GetItemWithError(row, key_id);
    PyObject *member = PyDict_GetItemWithError(row, key_member);
    PyObject *opened_by = PyDict_GetItemWithError(row, key_opened_by);
    if (PyErr_Occurred())
        return -1;
    if (!(remaining != NULL && PyLong_CheckExact(remaining) && lot_id != NULL &&
          PyUnicode_Check(lot_id) && member != NULL && PyUnicode_Check(member) &&
          opened_by != NULL && PyUnicode_Check(opened_by)))
        return 0;
    PyObject *flag = PyDict_GetItemWithError(row, key_pending);
    int is_pending = flag == NULL ? 0 : PyObject_IsTrue(flag);
    if (PyErr_Occurred())
        return -1;
    PyObject *values[LOT_KEYS];
    for (int i = 0; i < LOT_KEYS; i++) {
        values[i] = PyDict_GetItemWithError(row, lot_keys[i]);
        if (values[i] == NULL) {
            if (PyErr_Occurred())
                return -1;
            values[i] = Py_None;
        }
    }
    Py_ssize_t bucket;
    unsigned long long weight, terms, left = residue(remaining);
    if ((left == (unsigned long long)-1 && PyErr_Occurred()) ||
        terms_of(opened_by, row, values, &terms) < 0 ||
        slot_of(folder, lot_id, 0, &bucket, &weight) < 0)
        return -1;
    fold_in(folder, T_TERMS, bucket, weight, terms % MERSENNE_61);
    /* 2 × remaining + pending, as the leaves count a lot's state */
    fold_in(folder, T_STATE, bucket, weight, mod_p((unsigned __int128)2 * left + is_pending));
    return fold_key(folder, is_pending ? T_PENDING : T_COVER, member, left) < 0 ? -1 : 1;
}

PyDoc_STRVAR(fold_lots_doc,
             "fold_lots(lines, first_line, secret, buckets, kept, errors) -> tuple[dict, ...]\n\n"
             "audit.leafscan._fold_lots_python in C, folding as it goes: what the cached lots "
             "add to each tally of TALLIES, as scan() returns it.");

static PyObject *
fold_lots(PyObject *module, PyObject *args)
{
    PyObject *lines, *secret, *kept, *errors, *result = NULL;
    Py_ssize_t first_line, buckets;
    if (!PyArg_ParseTuple(args, "O!nSnO!O!", &PyList_Type, &lines, &first_line, &secret,
                          &buckets, &PyDict_Type, &kept, &PyList_Type, &errors))
        return NULL;
    if (loads == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "audit._native.configure() was not called");
        return NULL;
    }
    Folder folder;
    if (folder_open(&folder, secret, buckets, kept, N_TALLIES) < 0)
        goto done;
    for (Py_ssize_t n = 0; n < PyList_GET_SIZE(lines); n++) {
        PyObject *row = PyObject_CallOneArg(loads, PyList_GET_ITEM(lines, n));
        if (row == NULL) {
            if (!PyErr_ExceptionMatches(decode_error))
                goto done;
            PyErr_Clear();
        }
        int taken = row == NULL ? 0 : fold_lot_row(&folder, row);
        Py_XDECREF(row);
        if (taken < 0)
            goto done;
        if (!taken) {
            PyObject *error = Py_BuildValue("(NO)",
                                            PyUnicode_FromFormat("lots.jsonl:%zd", first_line + n),
                                            not_a_lot);
            int appended = error == NULL ? -1 : PyList_Append(errors, error);
            Py_XDECREF(error);
            if (appended < 0)
                goto done;
        }
    }
    result = folder_result(&folder, 0, N_TALLIES);
done:
    folder_close(&folder);
    return result;
}

PyDoc_STRVAR(configure_doc, "configure(**helpers): the helpers and constants scan() uses.");

static int
take(PyObject *kwargs, const char *name, PyObject **slot)
{
    PyObject *value = PyDict_GetItemString(kwargs, name);
    if (value == NULL) {
        PyErr_Format(PyExc_TypeError, "configure() needs %s", name);
        return -1;
    }
    Py_INCREF(value);
    Py_XSETREF(*slot, value);
    return 0;
}

static PyObject *
configure(PyObject *module, PyObject *args, PyObject *kwargs)
{
    PyObject *version = NULL, *depth = NULL;
    if (PyTuple_GET_SIZE(args) != 0 || kwargs == NULL) {
        PyErr_SetString(PyExc_TypeError, "configure() takes keyword arguments only");
        return NULL;
    }
    if (take(kwargs, "loads", &loads) < 0 || take(kwargs, "dumps", &dumps) < 0 ||
        take(kwargs, "decode_error", &decode_error) < 0 ||
        take(kwargs, "encode_error", &encode_error) < 0 ||
        take(kwargs, "entry_kinds", &entry_kinds) < 0 ||
        take(kwargs, "audit_kind", &audit_kind) < 0 ||
        take(kwargs, "accounts", &accounts) < 0 ||
        take(kwargs, "parse_account", &parse_account) < 0 ||
        take(kwargs, "known_stamp", &known_stamp) < 0 ||
        take(kwargs, "wide_text_ok", &wide_text_ok) < 0 ||
        take(kwargs, "is_normalized", &is_normalized) < 0 ||
        take(kwargs, "lot_terms", &lot_terms) < 0 ||
        take(kwargs, "envelope_version", &version) < 0 || take(kwargs, "max_depth", &depth) < 0)
        goto error;
    if (!PyDict_CheckExact(accounts) || !PyAnySet_CheckExact(entry_kinds)) {
        PyErr_SetString(PyExc_TypeError, "accounts must be a dict, entry_kinds a frozenset");
        goto error;
    }
    envelope_version = PyLong_AsLongLong(version);
    max_depth = PyLong_AsSsize_t(depth);
    if (!PyErr_Occurred() && (max_depth < 0 || max_depth > MAX_DEPTH_LIMIT))
        PyErr_SetString(PyExc_ValueError, "max_depth beyond what scan() can hold");
    Py_DECREF(version);
    Py_DECREF(depth);
    if (PyErr_Occurred()) {
        Py_CLEAR(loads); /* scan() and fold_lots() refuse to run half configured */
        return NULL;
    }
    Py_RETURN_NONE;
error:
    Py_XDECREF(version);
    Py_XDECREF(depth);
    Py_CLEAR(loads);
    return NULL;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS, scan_doc},
    {"records", records, METH_VARARGS, records_doc},
    {"fold", fold, METH_VARARGS, fold_doc},
    {"subtree_root", subtree_root, METH_VARARGS, subtree_root_doc},
    {"count_lines", count_lines, METH_VARARGS, count_lines_doc},
    {"fold_lots", fold_lots, METH_VARARGS, fold_lots_doc},
    {"configure", (PyCFunction)(void (*)(void))configure, METH_VARARGS | METH_KEYWORDS,
     configure_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "audit._native",
    "The bundle scan's inlined loop in C (see audit/_native.c and audit.leafscan).", -1, methods,
};

PyMODINIT_FUNC
PyInit__native(void)
{
    if (intern_all(envelope_names, envelope_keys, ENVELOPE_KEYS) < 0 ||
        intern_all(entry_names, entry_keys, ENTRY_KEYS) < 0 ||
        intern_all(lot_names, lot_keys, LOT_KEYS) < 0)
        return NULL;
    key_account = PyUnicode_InternFromString("account");
    key_amount = PyUnicode_InternFromString("amount");
    key_lot = PyUnicode_InternFromString("lot");
    key_delta = PyUnicode_InternFromString("delta");
    key_kind = PyUnicode_InternFromString("kind");
    key_id = PyUnicode_InternFromString("id");
    adjustment_kind = PyUnicode_InternFromString("ADJUSTMENT");
    nfc = PyUnicode_InternFromString("NFC");
    key_remaining = PyUnicode_InternFromString("remaining");
    key_member = PyUnicode_InternFromString("member");
    key_opened_by = PyUnicode_InternFromString("opened_by");
    key_pending = PyUnicode_InternFromString("pending");
    not_a_lot = PyUnicode_InternFromString("not a lot");
    sha_context = EVP_MD_CTX_new();
    sha256_md = EVP_MD_fetch(NULL, "SHA2-256", NULL);
    blake2b_mac = EVP_MAC_fetch(NULL, "BLAKE2BMAC", NULL);
    if (sha_context == NULL || sha256_md == NULL || blake2b_mac == NULL) {
        PyErr_SetString(PyExc_ImportError, "OpenSSL gave no SHA-256 or no BLAKE2b");
        return NULL;
    }
    if (!key_account || !key_amount || !key_lot || !key_delta || !key_kind || !key_id ||
        !adjustment_kind ||
        !nfc || !key_remaining || !key_member ||
        !key_opened_by || !key_pending || !not_a_lot)
        return NULL;
    PyObject *module = PyModule_Create(&module_def);
    /* Raised whenever a function's arguments or results change: audit.leafscan ignores a
     * module built from other sources (a stale build left beside newer ones). */
    if (module != NULL && PyModule_AddIntConstant(module, "INTERFACE", 4) < 0)
        Py_CLEAR(module);
    return module;
}
