/* The frame walks of proxy/frames.py in C: the only per-frame work on the relay path.
 *
 * Both functions read the 5-byte frame headers of one chunk (a type byte, then a big-endian
 * int32 length that counts itself) and decide whether the chunk can be relayed untouched.
 * They keep no state; proxy/frames.py holds the pure-Python twin they must agree with, and
 * tests/test_frames.py checks that they do, on random input. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

static inline int64_t frame_length(const unsigned char *p) {
    return (int32_t)(((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3]);
}

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

static PyMethodDef methods[] = {
    {"scan_client", (PyCFunction)(void (*)(void))scan_client, METH_FASTCALL, NULL},
    {"scan_server", (PyCFunction)(void (*)(void))scan_server, METH_FASTCALL, NULL},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "proxy._frames", NULL, 0, methods};

PyMODINIT_FUNC PyInit__frames(void) { return PyModule_Create(&module); }
