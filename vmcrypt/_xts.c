/*
 * AES-XTS-256 over many data units in one call, through OpenSSL's EVP API.
 *
 * Why this exists: XTS needs a fresh tweak per data unit, and OpenSSL's XTS
 * accepts exactly one update per tweak.  Driving that loop from Python costs
 * more than the AES work itself, so the loop lives here: the key schedule is
 * set once per XtsContext, only the IV (tweak = little-endian unit index) is
 * reset per unit, and the GIL is released while the units are processed.
 *
 * No cryptography is implemented here; OpenSSL does all of it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pythread.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <string.h>
#include <stdint.h>

#define XTS_KEY_BYTES 64
#define XTS_MIN_UNIT 16
/* Below this many bytes the GIL is kept: releasing it costs more than it saves. */
#define RELEASE_GIL_BYTES (64 * 1024)

typedef struct {
    PyObject_HEAD
    EVP_CIPHER_CTX *enc;
    EVP_CIPHER_CTX *dec;
    PyThread_type_lock lock; /* one user of the EVP contexts at a time */
} XtsContext;

static void
xts_dealloc(XtsContext *self)
{
    if (self->enc)
        EVP_CIPHER_CTX_free(self->enc);
    if (self->dec)
        EVP_CIPHER_CTX_free(self->dec);
    if (self->lock)
        PyThread_free_lock(self->lock);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
xts_init(XtsContext *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"key", NULL};
    Py_buffer key;
    int ok = 0;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*", kwlist, &key))
        return -1;
    if (key.len != XTS_KEY_BYTES) {
        PyErr_Format(PyExc_ValueError,
                     "AES-XTS-256 needs a 64-byte key, got %zd bytes", key.len);
        goto done;
    }
    if (self->enc || self->dec) {
        PyErr_SetString(PyExc_RuntimeError, "XtsContext is already initialised");
        goto done;
    }
    self->lock = PyThread_allocate_lock();
    self->enc = EVP_CIPHER_CTX_new();
    self->dec = EVP_CIPHER_CTX_new();
    if (!self->lock || !self->enc || !self->dec) {
        PyErr_NoMemory();
        goto done;
    }
    if (EVP_EncryptInit_ex(self->enc, EVP_aes_256_xts(), NULL, key.buf, NULL) != 1 ||
        EVP_DecryptInit_ex(self->dec, EVP_aes_256_xts(), NULL, key.buf, NULL) != 1) {
        PyErr_SetString(PyExc_ValueError, "OpenSSL rejected the AES-XTS-256 key");
        goto done;
    }
    ok = 1;
done:
    PyBuffer_Release(&key);
    return ok ? 0 : -1;
}

/* Process n bytes as consecutive data units starting at first_unit.
 * Returns 0 on success, -1 if OpenSSL reported an error. */
static int
crypt_units(EVP_CIPHER_CTX *ctx, int encrypt, uint64_t first_unit,
            const unsigned char *src, unsigned char *dst, size_t n, size_t unit)
{
    unsigned char iv[16];
    size_t off = 0;
    uint64_t index = first_unit;

    memset(iv, 0, sizeof iv);
    while (off < n) {
        size_t len = n - off < unit ? n - off : unit;
        int outl = 0;
        uint64_t v = index;
        for (int i = 0; i < 8; i++) { /* little-endian, independent of host order */
            iv[i] = (unsigned char)(v & 0xff);
            v >>= 8;
        }
        if (encrypt) {
            if (EVP_EncryptInit_ex(ctx, NULL, NULL, NULL, iv) != 1 ||
                EVP_EncryptUpdate(ctx, dst + off, &outl, src + off, (int)len) != 1)
                return -1;
        } else {
            if (EVP_DecryptInit_ex(ctx, NULL, NULL, NULL, iv) != 1 ||
                EVP_DecryptUpdate(ctx, dst + off, &outl, src + off, (int)len) != 1)
                return -1;
        }
        off += len;
        index++;
    }
    return 0;
}

/* Shared argument checks; returns 0 when the request is well-formed. */
static int
check_request(unsigned long long first_unit, Py_ssize_t n, Py_ssize_t unit)
{
    if (unit < XTS_MIN_UNIT || unit > (1 << 24)) {
        PyErr_Format(PyExc_ValueError,
                     "data unit size must be between 16 bytes and 16 MiB, got %zd", unit);
        return -1;
    }
    if (n % unit != 0 && n % unit < XTS_MIN_UNIT) {
        PyErr_Format(PyExc_ValueError,
                     "the last data unit has %zd bytes; XTS needs at least 16",
                     n % unit);
        return -1;
    }
    unsigned long long units = (unsigned long long)((n + unit - 1) / unit);
    if (units > 0 && first_unit > UINT64_MAX - (units - 1)) {
        PyErr_SetString(PyExc_OverflowError, "data unit index exceeds 64 bits");
        return -1;
    }
    return 0;
}

static PyObject *
run(XtsContext *self, int encrypt, unsigned long long first_unit,
    Py_buffer *src, unsigned char *dst, Py_ssize_t unit)
{
    int rc;
    EVP_CIPHER_CTX *ctx = encrypt ? self->enc : self->dec;

    if (ctx == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "XtsContext is not initialised");
        return NULL;
    }
    if (src->len >= RELEASE_GIL_BYTES) {
        Py_BEGIN_ALLOW_THREADS
        PyThread_acquire_lock(self->lock, WAIT_LOCK);
        rc = crypt_units(ctx, encrypt, first_unit, src->buf, dst, (size_t)src->len, (size_t)unit);
        PyThread_release_lock(self->lock);
        Py_END_ALLOW_THREADS
    } else {
        if (!PyThread_acquire_lock(self->lock, NOWAIT_LOCK)) {
            Py_BEGIN_ALLOW_THREADS
            PyThread_acquire_lock(self->lock, WAIT_LOCK);
            Py_END_ALLOW_THREADS
        }
        rc = crypt_units(ctx, encrypt, first_unit, src->buf, dst, (size_t)src->len, (size_t)unit);
        PyThread_release_lock(self->lock);
    }
    if (rc != 0) {
        PyErr_SetString(PyExc_ValueError, "OpenSSL failed to process an AES-XTS data unit");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
crypt_to_bytes(XtsContext *self, PyObject *args, int encrypt)
{
    unsigned long long first_unit;
    Py_buffer src;
    Py_ssize_t unit = 4096;
    PyObject *out = NULL;

    if (!PyArg_ParseTuple(args, "Ky*|n", &first_unit, &src, &unit))
        return NULL;
    if (check_request(first_unit, src.len, unit) != 0)
        goto done;
    out = PyBytes_FromStringAndSize(NULL, src.len);
    if (out == NULL)
        goto done;
    PyObject *r = run(self, encrypt, first_unit, &src,
                      (unsigned char *)PyBytes_AS_STRING(out), unit);
    if (r == NULL) {
        Py_CLEAR(out);
        goto done;
    }
    Py_DECREF(r);
done:
    PyBuffer_Release(&src);
    return out;
}

static PyObject *
crypt_into(XtsContext *self, PyObject *args, int encrypt)
{
    unsigned long long first_unit;
    Py_buffer src, dst;
    Py_ssize_t unit = 4096;
    PyObject *result = NULL;

    if (!PyArg_ParseTuple(args, "Ky*w*|n", &first_unit, &src, &dst, &unit))
        return NULL;
    if (dst.len < src.len) {
        PyErr_Format(PyExc_ValueError,
                     "output buffer holds %zd bytes, input has %zd", dst.len, src.len);
        goto done;
    }
    if (check_request(first_unit, src.len, unit) != 0)
        goto done;
    result = run(self, encrypt, first_unit, &src, dst.buf, unit);
done:
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    return result;
}

static PyObject *xts_encrypt(XtsContext *s, PyObject *a) { return crypt_to_bytes(s, a, 1); }
static PyObject *xts_decrypt(XtsContext *s, PyObject *a) { return crypt_to_bytes(s, a, 0); }
static PyObject *xts_encrypt_into(XtsContext *s, PyObject *a) { return crypt_into(s, a, 1); }
static PyObject *xts_decrypt_into(XtsContext *s, PyObject *a) { return crypt_into(s, a, 0); }

static PyMethodDef xts_methods[] = {
    {"encrypt", (PyCFunction)xts_encrypt, METH_VARARGS,
     "encrypt(first_unit, data, unit_size=4096) -> bytes"},
    {"decrypt", (PyCFunction)xts_decrypt, METH_VARARGS,
     "decrypt(first_unit, data, unit_size=4096) -> bytes"},
    {"encrypt_into", (PyCFunction)xts_encrypt_into, METH_VARARGS,
     "encrypt_into(first_unit, src, dst, unit_size=4096) -> None"},
    {"decrypt_into", (PyCFunction)xts_decrypt_into, METH_VARARGS,
     "decrypt_into(first_unit, src, dst, unit_size=4096) -> None"},
    {NULL, NULL, 0, NULL}};

static PyObject *
xts_repr(XtsContext *self)
{
    return PyUnicode_FromString("<XtsContext AES-XTS-256 key=<hidden>>");
}

static PyTypeObject XtsContextType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "vmcrypt._xts.XtsContext",
    .tp_basicsize = sizeof(XtsContext),
    .tp_dealloc = (destructor)xts_dealloc,
    .tp_repr = (reprfunc)xts_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "AES-XTS-256 key schedule held by OpenSSL; processes many data units per call.",
    .tp_methods = xts_methods,
    .tp_init = (initproc)xts_init,
    .tp_new = PyType_GenericNew,
};

static PyObject *
openssl_version(PyObject *self, PyObject *unused)
{
    return PyUnicode_FromString(OpenSSL_version(OPENSSL_VERSION));
}

static PyMethodDef module_methods[] = {
    {"openssl_version", openssl_version, METH_NOARGS, "Version of the OpenSSL library in use."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef xts_module = {
    PyModuleDef_HEAD_INIT, "vmcrypt._xts",
    "AES-XTS-256 data-unit loop over OpenSSL EVP.", -1, module_methods};

PyMODINIT_FUNC
PyInit__xts(void)
{
    PyObject *m;
    if (PyType_Ready(&XtsContextType) < 0)
        return NULL;
    m = PyModule_Create(&xts_module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&XtsContextType);
    if (PyModule_AddObject(m, "XtsContext", (PyObject *)&XtsContextType) < 0) {
        Py_DECREF(&XtsContextType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
