/* The frame walks and the function-name test of proxy/frames.py in C: the per-chunk work on
 * the relay path.
 *
 * Both functions read the 5-byte frame headers of one chunk (a type byte, then a big-endian
 * int32 length that counts itself) and decide whether the chunk can be relayed untouched.
 * They keep no state; proxy/frames.py holds the pure-Python twin they must agree with, and
 * tests/test_frames.py checks that they do, on random input. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "_text.h"

/* A 256-byte table from Python: table[type] is non-zero for the types asked about. */
static int table_arg(PyObject *obj, const unsigned char **table) {
    if (!PyBytes_Check(obj) || PyBytes_GET_SIZE(obj) != 256) {
        PyErr_SetString(PyExc_TypeError, "expected a 256-byte table");
        return -1;
    }
    *table = (const unsigned char *)PyBytes_AS_STRING(obj);
    return 0;
}

/* scan_client(data, plain, limit, bind_is_plain) -> int */
static PyObject *scan_client(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    const unsigned char *plain;
    if (nargs != 4 || !PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "scan_client(data: bytes, plain, limit, bind_is_plain)");
        return NULL;
    }
    if (table_arg(args[1], &plain) < 0) return NULL;
    long long limit = PyLong_AsLongLong(args[2]);
    if (limit == -1 && PyErr_Occurred()) return NULL;
    int bind_is_plain = PyObject_IsTrue(args[3]);
    if (bind_is_plain < 0) return NULL;

    const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t size = PyBytes_GET_SIZE(args[0]), pos = 0;
    long syncs = 0;
    while (pos < size) {
        if (size - pos < 5) return PyLong_FromLong(-1);
        unsigned char code = data[pos];
        int64_t length = frame_length(data + pos + 1);
        if (length < 4 || length > limit || length > size - pos - 1) return PyLong_FromLong(-1);
        if (!plain[code]) {
            if (code == 'S') {
                syncs++;
            } else if (code == 'Q') {
                if (pos != 0 || length != size - 1) return PyLong_FromLong(-1);
                syncs++;
            } else if ((code == 'D' || code == 'C') && length >= 5 && data[pos + 5] == 'P') {
                /* Describe or Close of a portal: nothing to note */
            } else if (code != 'B' || !bind_is_plain) {
                return PyLong_FromLong(-1);
            }
        }
        pos += 1 + (Py_ssize_t)length;
    }
    return PyLong_FromLong(syncs);
}

/* scan_server(data, inspected) -> int */
static PyObject *scan_server(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    const unsigned char *inspected;
    if (nargs != 2 || !PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "scan_server(data: bytes, inspected)");
        return NULL;
    }
    if (table_arg(args[1], &inspected) < 0) return NULL;

    const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t size = PyBytes_GET_SIZE(args[0]), pos = 0;
    for (;;) {
        if (size - pos < 5) return PyLong_FromLong(-1);
        int64_t length = frame_length(data + pos + 1);
        if (length < 4 || length > size - pos - 1) return PyLong_FromLong(-1);
        Py_ssize_t end = pos + 1 + (Py_ssize_t)length;
        if (end == size) return PyLong_FromSsize_t(pos);
        if (inspected[data[pos]]) return PyLong_FromLong(-1);
        pos = end;
    }
}

#define FEW_NEEDLES 256

/* find_any(needles, data, start, end) -> bool
 * Does data[start:end] hold one of `needles` (a tuple of lower-case bytes), ignoring ASCII
 * case? (holds_needle in _text.h.) */
static PyObject *find_any(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4 || !PyTuple_Check(args[0]) || !PyBytes_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "find_any(needles: tuple, data: bytes, start, end)");
        return NULL;
    }
    const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(args[1]);
    Py_ssize_t size = PyBytes_GET_SIZE(args[1]);
    Py_ssize_t start = PyLong_AsSsize_t(args[2]), end = PyLong_AsSsize_t(args[3]);
    if (PyErr_Occurred()) return NULL;
    if (start < 0) start = 0;
    if (end > size) end = size;
    Py_ssize_t count = PyTuple_GET_SIZE(args[0]);
    /* holds_needle takes C arrays: on the stack for the usual few dozen names */
    const unsigned char *few[FEW_NEEDLES], **needles = few;
    Py_ssize_t few_lens[FEW_NEEDLES], *lens = few_lens;
    if (count > FEW_NEEDLES) {
        needles = PyMem_Malloc((size_t)count * sizeof(*needles));
        lens = PyMem_Malloc((size_t)count * sizeof(*lens));
    }
    PyObject *result = NULL;
    if (needles == NULL || lens == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *needle = PyTuple_GET_ITEM(args[0], i);
        if (!PyBytes_Check(needle)) {
            PyErr_SetString(PyExc_TypeError, "needles must be bytes");
            goto done;
        }
        needles[i] = (const unsigned char *)PyBytes_AS_STRING(needle);
        lens[i] = PyBytes_GET_SIZE(needle);
    }
    int found = holds_needle(needles, lens, count, data + start, end > start ? end - start : 0);
    result = Py_NewRef(found ? Py_True : Py_False);
done:
    if (needles != few) PyMem_Free(needles);
    if (lens != few_lens) PyMem_Free(lens);
    return result;
}

static PyMethodDef methods[] = {
    {"scan_client", (PyCFunction)(void (*)(void))scan_client, METH_FASTCALL, NULL},
    {"scan_server", (PyCFunction)(void (*)(void))scan_server, METH_FASTCALL, NULL},
    {"find_any", (PyCFunction)(void (*)(void))find_any, METH_FASTCALL, NULL},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "proxy._frames", NULL, 0, methods};

PyMODINIT_FUNC PyInit__frames(void) { return PyModule_Create(&module); }
