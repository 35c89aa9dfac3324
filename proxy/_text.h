/* What both C extensions (proxy/_frames.c and proxy/_relay.c) read the same way: a frame
 * header's length, and the search of SQL text for iasql function names. */

#ifndef IASQL_TEXT_H
#define IASQL_TEXT_H

#ifndef PY_SSIZE_T_CLEAN
#error "define PY_SSIZE_T_CLEAN and include Python.h before _text.h"
#endif
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* The big-endian int32 after a frame's type byte: the frame's length, counting itself. */
static inline int64_t frame_length(const unsigned char *p) {
    return (int32_t)(((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3]);
}

static inline int equal_ignoring_case(const unsigned char *text, const unsigned char *lower,
                                      Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = text[i];
        if (c >= 'A' && c <= 'Z') c += 'a' - 'A';
        if (c != lower[i]) return 0;
    }
    return 1;
}

/* Does text[0:len] hold one of the `count` lower-case needles, ignoring ASCII case? Needles
 * with an underscore are only tried where the text has one, lined up on the needle's first
 * underscore: SQL text has few underscores, so this is mostly a memchr scan. */
static int holds_needle(const unsigned char *const *needles, const Py_ssize_t *lens,
                        Py_ssize_t count, const unsigned char *text, Py_ssize_t len) {
    for (Py_ssize_t pos = 0; pos < len;) {
        const unsigned char *u = memchr(text + pos, '_', (size_t)(len - pos));
        if (u == NULL) break;
        Py_ssize_t at = u - text;
        for (Py_ssize_t i = 0; i < count; i++) {
            const unsigned char *first = memchr(needles[i], '_', (size_t)lens[i]);
            if (first == NULL) continue;
            Py_ssize_t from = at - (first - needles[i]);
            if (from >= 0 && from + lens[i] <= len &&
                equal_ignoring_case(text + from, needles[i], lens[i]))
                return 1;
        }
        pos = at + 1;
    }
    for (Py_ssize_t i = 0; i < count; i++) { /* needles without an underscore: every place */
        if (memchr(needles[i], '_', (size_t)lens[i]) != NULL) continue;
        for (Py_ssize_t from = 0; from + lens[i] <= len; from++)
            if (equal_ignoring_case(text + from, needles[i], lens[i])) return 1;
    }
    return 0;
}

#endif
