/*
 * The per-entry loops of measured-boot verification: parsing a crypto-agile
 * event log's TCG_PCR_EVENT2 entries, replaying one PCR bank, and replaying an
 * ima-ng list against reference values.
 *
 * Why this exists: a verifier runs these loops for every event of every
 * attestation, and CPython's cost per event (unpacking, slicing, one hashlib
 * call per extend) was most of a verification.  The Python code in
 * vtpm/eventlog.py and vtpm/ima.py stays the reference: every function here
 * returns None whenever its input is anything but well-formed, and the caller
 * then runs the Python code, which raises the error with its message.  So this
 * module only ever accepts what the Python code accepts and returns what it
 * returns; tests/unit/test_measure_ext.py checks that on hostile inputs.
 *
 * Every read is bounds-checked against what is left of the input (pos <= total
 * always holds; each check is written `total - pos < need`, which cannot
 * overflow).  Hashing is OpenSSL's EVP with the digests fetched once.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define OPENSSL_SUPPRESS_DEPRECATED /* SHA256_Init & co.: see hash2 */
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <stdint.h>
#include <string.h>

#define PCR_COUNT 24
#define MAX_ALGORITHMS 16
#define MAX_DIGEST EVP_MAX_MD_SIZE
#define EVENT_FIELDS 6 /* number, offset, pcr, event_type, digests, data */
#define IMA_HEAD 38    /* u32 pcr, 20-byte template hash, u32 name length, "ima-ng", u32 data length */
#define SHA1_SIZE 20

static EVP_MD *md_sha1, *md_sha256, *md_sha384, *md_sha512;

static const EVP_MD *
md_for(unsigned long alg)
{
    switch (alg) {
    case 0x0004: return md_sha1;
    case 0x000B: return md_sha256;
    case 0x000C: return md_sha384;
    case 0x000D: return md_sha512;
    default: return NULL;
    }
}

static inline uint32_t
le32(const unsigned char *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static inline uint16_t
le16(const unsigned char *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

/* out = H(a || b); returns 0 on success, -1 with a Python error set. The one-shot SHA functions hash on
 * the stack: EVP_DigestInit_ex of OpenSSL 3.0 allocates and frees a provider context per digest, which
 * costs as much as hashing the 64 bytes of an extend. */
static int
hash2(EVP_MD_CTX *ctx, const EVP_MD *md, const void *a, size_t a_len, const void *b, size_t b_len,
      unsigned char *out)
{
    int ok;
    (void)ctx;
    if (md == md_sha256) {
        SHA256_CTX c;
        ok = SHA256_Init(&c) && SHA256_Update(&c, a, a_len) && SHA256_Update(&c, b, b_len) && SHA256_Final(out, &c);
    } else if (md == md_sha1) {
        SHA_CTX c;
        ok = SHA1_Init(&c) && SHA1_Update(&c, a, a_len) && SHA1_Update(&c, b, b_len) && SHA1_Final(out, &c);
    } else if (md == md_sha384) {
        SHA512_CTX c;
        ok = SHA384_Init(&c) && SHA384_Update(&c, a, a_len) && SHA384_Update(&c, b, b_len) && SHA384_Final(out, &c);
    } else {
        SHA512_CTX c;
        ok = SHA512_Init(&c) && SHA512_Update(&c, a, a_len) && SHA512_Update(&c, b, b_len) && SHA512_Final(out, &c);
    }
    if (!ok) {
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL digest failed");
        return -1;
    }
    return 0;
}

/* A tuple subclass instance (a NamedTuple) made the way tuple.__new__ makes one; steals the items. */
static PyObject *
make_record(PyTypeObject *cls, PyObject **items, Py_ssize_t n)
{
    PyObject *record = cls->tp_alloc(cls, n);
    Py_ssize_t i;
    if (record == NULL) {
        for (i = 0; i < n; i++)
            Py_DECREF(items[i]);
        return NULL;
    }
    for (i = 0; i < n; i++)
        PyTuple_SET_ITEM(record, i, items[i]);
    return record;
}

/* ------------------------------------------------------------------ the crypto-agile event log */

PyDoc_STRVAR(parse_events_doc,
"parse_events(data, offset, algorithms, sizes, event_class) -> tuple | None\n\n"
"The TCG_PCR_EVENT2 entries of data[offset:] as event_class(number, offset, pcr, event_type,\n"
"digests, data) records, given the Spec ID's algorithm IDs and digest sizes; None when the\n"
"entries are not all well-formed (the Python parser then reports why).");

static PyObject *
parse_events(PyObject *module, PyObject *args)
{
    PyObject *data_obj, *algs_obj, *sizes_obj, *cls_obj;
    Py_ssize_t start;
    if (!PyArg_ParseTuple(args, "O!nO!O!O!:parse_events", &PyBytes_Type, &data_obj, &start, &PyTuple_Type,
                          &algs_obj, &PyTuple_Type, &sizes_obj, &PyType_Type, &cls_obj))
        return NULL;
    PyTypeObject *cls = (PyTypeObject *)cls_obj;
    if (!PyType_IsSubtype(cls, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "event_class must be a tuple subclass");
        return NULL;
    }
    Py_ssize_t count = PyTuple_GET_SIZE(algs_obj);
    if (count == 0 || count > MAX_ALGORITHMS || PyTuple_GET_SIZE(sizes_obj) != count)
        Py_RETURN_NONE;
    unsigned long algs[MAX_ALGORITHMS];
    size_t sizes[MAX_ALGORITHMS];
    PyObject *alg_keys[MAX_ALGORITHMS];
    for (Py_ssize_t i = 0; i < count; i++) {
        alg_keys[i] = PyTuple_GET_ITEM(algs_obj, i);
        algs[i] = PyLong_AsUnsignedLong(alg_keys[i]);
        long size = PyLong_AsLong(PyTuple_GET_ITEM(sizes_obj, i));
        if (PyErr_Occurred()) {
            PyErr_Clear();
            Py_RETURN_NONE;
        }
        if (algs[i] > 0xFFFF || size <= 0 || size > 0xFFFF)
            Py_RETURN_NONE;
        sizes[i] = (size_t)size;
    }
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(data_obj);
    size_t total = (size_t)PyBytes_GET_SIZE(data_obj);
    if (start < 0 || (size_t)start > total)
        Py_RETURN_NONE;
    size_t pos = (size_t)start;
    PyObject *events = PyList_New(0);
    if (events == NULL)
        return NULL;
    Py_ssize_t number = 0;
    while (pos < total) {
        number++;
        size_t offset = pos;
        if (total - pos < 12)
            goto malformed;
        uint32_t pcr = le32(p + pos), event_type = le32(p + pos + 4), digest_count = le32(p + pos + 8);
        pos += 12;
        if (pcr >= PCR_COUNT || digest_count > (uint32_t)count)
            goto malformed;
        PyObject *digests = PyDict_New();
        if (digests == NULL)
            goto error;
        unsigned int seen = 0;
        for (uint32_t d = 0; d < digest_count; d++) {
            Py_ssize_t j;
            if (total - pos < 2) {
                Py_DECREF(digests);
                goto malformed;
            }
            uint16_t alg = le16(p + pos);
            for (j = 0; j < count && algs[j] != alg; j++)
                ;
            if (j == count || (seen & (1u << j))) {
                Py_DECREF(digests);
                goto malformed;
            }
            seen |= 1u << j;
            pos += 2;
            if (total - pos < sizes[j]) {
                Py_DECREF(digests);
                goto malformed;
            }
            PyObject *value = PyBytes_FromStringAndSize((const char *)p + pos, (Py_ssize_t)sizes[j]);
            if (value == NULL || PyDict_SetItem(digests, alg_keys[j], value) < 0) {
                Py_XDECREF(value);
                Py_DECREF(digests);
                goto error;
            }
            Py_DECREF(value);
            pos += sizes[j];
        }
        if (total - pos < 4) {
            Py_DECREF(digests);
            goto malformed;
        }
        size_t size = le32(p + pos);
        pos += 4;
        if (total - pos < size) {
            Py_DECREF(digests);
            goto malformed;
        }
        PyObject *items[EVENT_FIELDS] = {
            PyLong_FromSsize_t(number), PyLong_FromSize_t(offset), PyLong_FromUnsignedLong(pcr),
            PyLong_FromUnsignedLong(event_type), digests,
            PyBytes_FromStringAndSize((const char *)p + pos, (Py_ssize_t)size)};
        pos += size;
        int failed = 0;
        for (int i = 0; i < EVENT_FIELDS; i++)
            failed |= items[i] == NULL;
        if (failed) {
            for (int i = 0; i < EVENT_FIELDS; i++)
                Py_XDECREF(items[i]);
            goto error;
        }
        PyObject *event = make_record(cls, items, EVENT_FIELDS);
        if (event == NULL)
            goto error;
        int appended = PyList_Append(events, event);
        Py_DECREF(event);
        if (appended < 0)
            goto error;
    }
    PyObject *result = PyList_AsTuple(events);
    Py_DECREF(events);
    return result;
malformed:
    Py_DECREF(events);
    Py_RETURN_NONE;
error:
    Py_DECREF(events);
    return NULL;
}

PyDoc_STRVAR(replay_bank_doc,
"replay_bank(events, algorithm, no_action, initial) -> list | None\n\n"
"The 24 PCR values of one bank after extending every event that is not of type no_action\n"
"(its digests[algorithm]), from the tuple of 24 initial values; None when the bank has no compiled\n"
"hash or an event is not a well-formed record with a digest for it.");

static PyObject *
replay_bank(PyObject *module, PyObject *args)
{
    PyObject *events, *alg_obj, *initial;
    long no_action;
    if (!PyArg_ParseTuple(args, "O!O!lO!:replay_bank", &PyTuple_Type, &events, &PyLong_Type, &alg_obj, &no_action,
                          &PyTuple_Type, &initial))
        return NULL;
    unsigned long alg = PyLong_AsUnsignedLong(alg_obj);
    if (PyErr_Occurred()) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    const EVP_MD *md = md_for(alg);
    if (md == NULL || PyTuple_GET_SIZE(initial) != PCR_COUNT)
        Py_RETURN_NONE;
    size_t out_size = (size_t)EVP_MD_get_size(md);
    unsigned char values[PCR_COUNT][MAX_DIGEST];
    size_t lengths[PCR_COUNT];
    for (int i = 0; i < PCR_COUNT; i++) {
        PyObject *value = PyTuple_GET_ITEM(initial, i);
        if (!PyBytes_Check(value) || (size_t)PyBytes_GET_SIZE(value) > MAX_DIGEST)
            Py_RETURN_NONE;
        lengths[i] = (size_t)PyBytes_GET_SIZE(value);
        memcpy(values[i], PyBytes_AS_STRING(value), lengths[i]);
    }
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (ctx == NULL)
        return PyErr_NoMemory();
    Py_ssize_t n = PyTuple_GET_SIZE(events);
    for (Py_ssize_t e = 0; e < n; e++) {
        PyObject *event = PyTuple_GET_ITEM(events, e);
        if (!PyTuple_Check(event) || PyTuple_GET_SIZE(event) != EVENT_FIELDS)
            goto irregular;
        PyObject *pcr_obj = PyTuple_GET_ITEM(event, 2), *type_obj = PyTuple_GET_ITEM(event, 3);
        PyObject *digests = PyTuple_GET_ITEM(event, 4);
        if (!PyLong_CheckExact(pcr_obj) || !PyLong_CheckExact(type_obj) || !PyDict_CheckExact(digests))
            goto irregular;
        long event_type = PyLong_AsLong(type_obj);
        long pcr = PyLong_AsLong(pcr_obj);
        if (PyErr_Occurred()) {
            PyErr_Clear();
            goto irregular;
        }
        if (event_type == no_action)
            continue;
        if (pcr < 0 || pcr >= PCR_COUNT)
            goto irregular;
        PyObject *digest = PyDict_GetItemWithError(digests, alg_obj);
        if (digest == NULL) {
            if (PyErr_Occurred())
                goto error;
            goto irregular;
        }
        if (!PyBytes_Check(digest))
            goto irregular;
        if (hash2(ctx, md, values[pcr], lengths[pcr], PyBytes_AS_STRING(digest), (size_t)PyBytes_GET_SIZE(digest),
                  values[pcr]) < 0)
            goto error;
        lengths[pcr] = out_size;
    }
    EVP_MD_CTX_free(ctx);
    PyObject *result = PyList_New(PCR_COUNT);
    if (result == NULL)
        return NULL;
    for (int i = 0; i < PCR_COUNT; i++) {
        PyObject *value = PyBytes_FromStringAndSize((const char *)values[i], (Py_ssize_t)lengths[i]);
        if (value == NULL) {
            Py_DECREF(result);
            return NULL;
        }
        PyList_SET_ITEM(result, i, value);
    }
    return result;
irregular:
    EVP_MD_CTX_free(ctx);
    Py_RETURN_NONE;
error:
    EVP_MD_CTX_free(ctx);
    return NULL;
}

/* ------------------------------------------------------------------ the IMA list */

PyDoc_STRVAR(ima_replay_doc,
"ima_replay_reference(data, reference, algorithm, pcr, max_entry_data) -> tuple | None\n\n"
"(PCR value, [(number, offset, pcr, template_hash, template_data) of each entry whose template\n"
"data is not a key of reference or whose template hash is zero], entry count) for a binary\n"
"ima-ng list replayed into one bank; reference maps template data to its digest in that bank.\n"
"None when an entry's framing is malformed or the bank has no compiled hash.");

static PyObject *
ima_replay_reference(PyObject *module, PyObject *args)
{
    PyObject *data_obj, *reference, *alg_obj;
    unsigned long pcr_wanted;
    Py_ssize_t max_entry;
    if (!PyArg_ParseTuple(args, "O!O!O!kn:ima_replay_reference", &PyBytes_Type, &data_obj, &PyDict_Type, &reference,
                          &PyLong_Type, &alg_obj, &pcr_wanted, &max_entry))
        return NULL;
    unsigned long alg = PyLong_AsUnsignedLong(alg_obj);
    if (PyErr_Occurred()) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    const EVP_MD *md = md_for(alg);
    if (md == NULL || max_entry < 0)
        Py_RETURN_NONE;
    size_t size = (size_t)EVP_MD_get_size(md);
    unsigned char value[MAX_DIGEST], ones[MAX_DIGEST], measured_buf[MAX_DIGEST];
    static const unsigned char zero_hash[SHA1_SIZE];
    memset(value, 0, sizeof value);
    memset(ones, 0xFF, sizeof ones);
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(data_obj);
    size_t total = (size_t)PyBytes_GET_SIZE(data_obj), pos = 0;
    PyObject *unknown = PyList_New(0);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (unknown == NULL || ctx == NULL) {
        Py_XDECREF(unknown);
        EVP_MD_CTX_free(ctx);
        return PyErr_NoMemory();
    }
    Py_ssize_t number = 0;
    while (pos < total) {
        number++;
        size_t offset = pos;
        if (total - pos < IMA_HEAD)
            goto irregular;
        uint32_t entry_pcr = le32(p + pos);
        const unsigned char *template_hash = p + pos + 4;
        if (le32(p + pos + 24) != 6 || memcmp(p + pos + 28, "ima-ng", 6) != 0)
            goto irregular;
        size_t data_len = le32(p + pos + 34);
        pos += IMA_HEAD;
        if (data_len > (size_t)max_entry || total - pos < data_len || entry_pcr != pcr_wanted)
            goto irregular;
        PyObject *body = PyBytes_FromStringAndSize((const char *)p + pos, (Py_ssize_t)data_len);
        if (body == NULL)
            goto error;
        pos += data_len;
        int violation = memcmp(template_hash, zero_hash, SHA1_SIZE) == 0;
        PyObject *reference_value = PyDict_GetItemWithError(reference, body); /* borrowed */
        const unsigned char *measured;
        size_t measured_len;
        if (reference_value == NULL && PyErr_Occurred()) {
            Py_DECREF(body);
            goto error;
        }
        if (reference_value == NULL || violation) {
            PyObject *items[5] = {PyLong_FromSsize_t(number), PyLong_FromSize_t(offset),
                                  PyLong_FromUnsignedLong(entry_pcr),
                                  PyBytes_FromStringAndSize((const char *)template_hash, SHA1_SIZE), body};
            PyObject *record = NULL;
            if (items[0] && items[1] && items[2] && items[3])
                record = PyTuple_Pack(5, items[0], items[1], items[2], items[3], items[4]);
            int appended = record != NULL ? PyList_Append(unknown, record) : -1;
            for (int i = 0; i < 5; i++)
                Py_XDECREF(items[i]);
            Py_XDECREF(record);
            if (appended < 0)
                goto error;
            if (violation) {
                measured = ones;
                measured_len = size;
            } else {
                if (hash2(ctx, md, p + pos - data_len, data_len, NULL, 0, measured_buf) < 0)
                    goto error;
                measured = measured_buf;
                measured_len = size;
            }
        } else {
            if (!PyBytes_Check(reference_value)) {
                Py_DECREF(body);
                goto irregular;
            }
            /* reference_value is owned by the dict, which the caller keeps alive and this loop does not change */
            measured = (const unsigned char *)PyBytes_AS_STRING(reference_value);
            measured_len = (size_t)PyBytes_GET_SIZE(reference_value);
            Py_DECREF(body);
        }
        if (hash2(ctx, md, value, size, measured, measured_len, value) < 0)
            goto error;
    }
    EVP_MD_CTX_free(ctx);
    PyObject *result = Py_BuildValue("(y#Nn)", (const char *)value, (Py_ssize_t)size, unknown, number);
    return result;
irregular:
    EVP_MD_CTX_free(ctx);
    Py_DECREF(unknown);
    Py_RETURN_NONE;
error:
    EVP_MD_CTX_free(ctx);
    Py_DECREF(unknown);
    return NULL;
}

/* ------------------------------------------------------------------ module */

static PyMethodDef measure_methods[] = {
    {"parse_events", parse_events, METH_VARARGS, parse_events_doc},
    {"replay_bank", replay_bank, METH_VARARGS, replay_bank_doc},
    {"ima_replay_reference", ima_replay_reference, METH_VARARGS, ima_replay_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef measure_module = {
    PyModuleDef_HEAD_INIT, "vtpm._measure",
    "Compiled loops of event log and IMA list parsing and replay (see vtpm/_measure.c).", -1, measure_methods,
};

PyMODINIT_FUNC
PyInit__measure(void)
{
    if (md_sha1 == NULL) {
        md_sha1 = EVP_MD_fetch(NULL, "SHA1", NULL);
        md_sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
        md_sha384 = EVP_MD_fetch(NULL, "SHA384", NULL);
        md_sha512 = EVP_MD_fetch(NULL, "SHA512", NULL);
        if (md_sha1 == NULL || md_sha256 == NULL || md_sha384 == NULL || md_sha512 == NULL) {
            PyErr_SetString(PyExc_ImportError, "OpenSSL has no SHA-1/SHA-256/SHA-384/SHA-512");
            return NULL;
        }
    }
    return PyModule_Create(&measure_module);
}
