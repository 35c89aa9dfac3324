/* The native data plane: established sessions relayed by a C thread, frame by frame.
 *
 * Two parts:
 *  - the walk (walk_client, walk_server): a pure decision over bytes. Given the bytes one
 *    direction has read and not yet relayed, how many of them may go on untouched, and does
 *    the next frame need the Python session? It reads frame headers, and the bodies of only
 *    the frames proxy/session.py would look into: a Query or Parse (does it name an iasql
 *    function?), a Describe, and while statements are rewritten, a Bind or Close (of one of
 *    them?). From the server it reads whole the frames that answer what the session counts:
 *    ReadyForQuery, ErrorResponse, ParameterDescription. The `Walk` type runs it on Python
 *    bytes, for the differential tests.
 *  - the relay (`Relay`): one thread, one epoll set, moving bytes between the two sockets of
 *    each adopted session through the walk. When the walk stops, a socket ends or fails, the
 *    session goes back to Python ("handed back"): its socket file descriptors leave the epoll
 *    set, its buffers and walk state are queued, and an eventfd the asyncio loop watches is
 *    written. The thread never closes a socket (the asyncio transports own them) and never
 *    touches a Python object (it runs without the GIL).
 *
 * A handback may come earlier than needed (a Describe with 64 others unanswered, a frame over
 * the buffer, a name that is not ASCII): the Python session then does what it always did.
 * Relaying, on the other hand, must be exactly what the session would do: tests/test_native.py
 * checks it. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "_text.h"

/* --- the walk ---------------------------------------------------------------------------- */

typedef struct {
    unsigned char **items;
    Py_ssize_t *lens;
    Py_ssize_t count;
} strings_t;

#define MAX_DESCRIBES 64 /* more unanswered at once: the session takes them */

typedef struct {
    const strings_t *needles; /* lower-case function names (proxy.intercept.needles) */
    strings_t names;          /* statements the session rewrote (Session._prepared) */
    int64_t max_message;
    int64_t capacity;   /* a frame read whole must fit in this many bytes, else: handback */
    int64_t client_skip; /* bytes of a client frame still to relay, past its header */
    int64_t server_skip;
    int64_t syncs;       /* Queries and Syncs not yet answered by a ReadyForQuery */
    int status;          /* the last ReadyForQuery's status byte; -1: it had none */
    /* Describes of statements the proxy did not rewrite, not yet answered, oldest first: for
     * each, how many of `syncs` were sent before it (Session._inflight holds them in order, to
     * tell their ParameterDescriptions from those of rewritten statements). */
    int64_t ahead[MAX_DESCRIBES];
    int describes;
} walk_t;

static void strings_free(strings_t *s) {
    for (Py_ssize_t i = 0; i < s->count; i++) free(s->items[i]);
    free(s->items);
    free(s->lens);
    s->items = NULL;
    s->lens = NULL;
    s->count = 0;
}

/* A tuple of bytes (or an iterable of them) copied into C memory. */
static int strings_from(PyObject *obj, strings_t *out) {
    out->items = NULL;
    out->lens = NULL;
    out->count = 0;
    PyObject *seq = PySequence_Fast(obj, "expected a sequence of bytes");
    if (seq == NULL) return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    out->items = calloc((size_t)(n ? n : 1), sizeof(unsigned char *));
    out->lens = calloc((size_t)(n ? n : 1), sizeof(Py_ssize_t));
    if (out->items == NULL || out->lens == NULL) goto nomem;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyBytes_Check(item)) {
            PyErr_SetString(PyExc_TypeError, "expected bytes");
            goto fail;
        }
        Py_ssize_t len = PyBytes_GET_SIZE(item);
        out->items[i] = malloc((size_t)len + 1);
        if (out->items[i] == NULL) goto nomem;
        memcpy(out->items[i], PyBytes_AS_STRING(item), (size_t)len);
        out->lens[i] = len;
        out->count = i + 1;
    }
    Py_DECREF(seq);
    return 0;
nomem:
    PyErr_NoMemory();
fail:
    Py_DECREF(seq);
    strings_free(out);
    return -1;
}

static int is_frontend_type(unsigned char c) {
    return c != 0 && strchr("BCdcfDEHFPpQSX", c) != NULL;
}

/* proxy.frames.find_any over text[0:len]: does it hold a needle, ignoring ASCII case? */
static int mentions(const strings_t *needles, const unsigned char *text, Py_ssize_t len) {
    return holds_needle((const unsigned char *const *)needles->items, needles->lens,
                        needles->count, text, len);
}

/* The length of the NUL-terminated ASCII string at body[pos:len], or -1 when it is not one
 * (no NUL, or a byte the Python session would have to decode as UTF-8). */
static Py_ssize_t ascii_cstring(const unsigned char *body, Py_ssize_t pos, Py_ssize_t len) {
    for (Py_ssize_t i = pos; i < len; i++) {
        if (body[i] == 0) return i - pos;
        if (body[i] >= 0x80) return -1;
    }
    return -1;
}

static int is_name(const strings_t *names, const unsigned char *s, Py_ssize_t len) {
    for (Py_ssize_t i = 0; i < names->count; i++)
        if (names->lens[i] == len && memcmp(names->items[i], s, (size_t)len) == 0) return 1;
    return 0;
}

static int read_i16(const unsigned char *b, Py_ssize_t *pos, Py_ssize_t len, int *out) {
    if (len - *pos < 2) return -1;
    *out = (int16_t)((b[*pos] << 8) | b[*pos + 1]);
    *pos += 2;
    return 0;
}

/* May this Bind be relayed while `names` are rewritten? It must be well formed as
 * proxy.protocol.decode_bind reads it (or the session would end the connection), with ASCII
 * names, and bind no rewritten statement. */
static int bind_is_plain(const walk_t *w, const unsigned char *b, Py_ssize_t len) {
    Py_ssize_t pos = 0, portal = ascii_cstring(b, 0, len);
    if (portal < 0) return 0;
    pos = portal + 1;
    Py_ssize_t statement = ascii_cstring(b, pos, len);
    if (statement < 0 || is_name(&w->names, b + pos, statement)) return 0;
    pos += statement + 1;
    int formats, values, results, ignored;
    if (read_i16(b, &pos, len, &formats) < 0 || formats < 0) return 0;
    for (int i = 0; i < formats; i++)
        if (read_i16(b, &pos, len, &ignored) < 0) return 0;
    if (read_i16(b, &pos, len, &values) < 0 || values < 0) return 0;
    for (int i = 0; i < values; i++) {
        if (len - pos < 4) return 0;
        int64_t size = frame_length(b + pos);
        pos += 4;
        if (size == -1) continue;
        if (size < 0 || size > len - pos) return 0;
        pos += (Py_ssize_t)size;
    }
    if (read_i16(b, &pos, len, &results) < 0 || results < 0) return 0;
    for (int i = 0; i < results; i++)
        if (read_i16(b, &pos, len, &ignored) < 0) return 0;
    return pos == len && (formats == 0 || formats == 1 || formats == values);
}

/* A Close or Describe of a statement while `names` are rewritten: relayed when it is well
 * formed (as proxy.protocol.decode_target reads it) and names none of them. */
static int statement_is_plain(const walk_t *w, const unsigned char *b, Py_ssize_t len) {
    Py_ssize_t name = ascii_cstring(b, 1, len);
    return name >= 0 && 1 + name + 1 == len && !is_name(&w->names, b + 1, name);
}

/* Does the session need to see this whole client frame (0: relay it)? `b` is its body. */
static int client_frame_needs_python(walk_t *w, unsigned char code, const unsigned char *b,
                                     Py_ssize_t len) {
    switch (code) {
    case 'Q':
        if (mentions(w->needles, b, len)) return 1;
        w->syncs++;
        return 0;
    case 'P':
        if (mentions(w->needles, b, len)) return 1;
        /* A new unnamed statement replaces a rewritten one of that name. */
        return w->names.count && len > 0 && b[0] == 0 && is_name(&w->names, b, 0);
    case 'B':
        return !bind_is_plain(w, b, len);
    case 'D': /* of a statement: noted, to match its ParameterDescription */
        if (len == 0 || b[0] != 'S') return 0;
        if (w->names.count && !statement_is_plain(w, b, len)) return 1;
        if (w->describes == MAX_DESCRIBES) return 1;
        w->ahead[w->describes++] = w->syncs;
        return 0;
    case 'C':
        return len > 0 && b[0] == 'S' && !statement_is_plain(w, b, len);
    }
    return 0;
}

/* Frames whose body the walk reads: the session looks into them. */
static int read_whole(const walk_t *w, unsigned char code) {
    return code == 'Q' || code == 'P' || code == 'D' ||
           (w->names.count && (code == 'B' || code == 'C'));
}

/* Bytes at the start of a chunk that finish a frame relayed in part: they go on as they are. */
static Py_ssize_t rest_of_frame(int64_t *skip, Py_ssize_t len) {
    Py_ssize_t n = *skip < len ? (Py_ssize_t)*skip : len;
    *skip -= n;
    return n;
}

/* A frame of `total` bytes at buf[pos:len] relayed as it comes: where the walk goes on. What
 * has not arrived yet is left in *skip, for the next chunks. */
static Py_ssize_t stream_frame(int64_t *skip, int64_t total, Py_ssize_t pos, Py_ssize_t len) {
    if (total <= len - pos) return pos + (Py_ssize_t)total;
    *skip = total - (len - pos);
    return len;
}

/* How many bytes of buf[0:len] (client bytes not yet relayed) may go to the server as they
 * are. *stop is set when the frame that follows them is the Python session's (or breaks the
 * protocol, which the session reports); otherwise what follows is a frame still incomplete. */
static Py_ssize_t walk_client(walk_t *w, const unsigned char *buf, Py_ssize_t len, int *stop) {
    Py_ssize_t pos = rest_of_frame(&w->client_skip, len);
    *stop = 0;
    while (len - pos >= 5) {
        unsigned char code = buf[pos];
        int64_t length = frame_length(buf + pos + 1);
        if (!is_frontend_type(code) || length < 4 || length > w->max_message) {
            *stop = 1;
            break;
        }
        int64_t total = 1 + length, have = len - pos;
        if (read_whole(w, code)) {
            if (total > have) {
                *stop = total > w->capacity;
                break;
            }
            if (client_frame_needs_python(w, code, buf + pos + 5, (Py_ssize_t)length - 4)) {
                *stop = 1;
                break;
            }
            pos += (Py_ssize_t)total;
            continue;
        }
        if (code == 'S' || code == 'F') w->syncs++; /* each answered by one ReadyForQuery */
        pos = stream_frame(&w->client_skip, total, pos, len);
    }
    return pos;
}

/* Forgets up to `count` of the noted Describes sent after the last answered Query or Sync. */
static void forget_describes(walk_t *w, int count) {
    int n = 0;
    while (n < w->describes && n < count && w->ahead[n] == 0) n++;
    memmove(w->ahead, w->ahead + n, (size_t)(w->describes - n) * sizeof(w->ahead[0]));
    w->describes -= n;
}

/* A whole ReadyForQuery, ErrorResponse or ParameterDescription: what it answers, as
 * Session._server_frame counts it. */
static void answered(walk_t *w, unsigned char code, const unsigned char *frame, int64_t length) {
    if (code == 't') { /* answers the oldest Describe, if no Sync comes before it */
        forget_describes(w, 1);
        return;
    }
    forget_describes(w, MAX_DESCRIBES); /* an error skips the rest up to the Sync */
    if (code != 'Z') return;
    w->status = length > 4 ? frame[5] : -1;
    if (w->syncs > 0) {
        w->syncs--;
        for (int i = 0; i < w->describes; i++) w->ahead[i]--;
    }
}

/* The same for server bytes going to the client: every frame is relayed; a ReadyForQuery
 * answers the oldest Query or Sync, and with an ErrorResponse or a ParameterDescription, some
 * noted Describes. Those three are read whole, always (were an ErrorResponse streamed while
 * no Describe waits, one noted before its end would be forgotten by the session and kept
 * here), so one over the buffer is the session's, as are a BackendKeyData (the session
 * registers cancel keys) and a broken length. */
static Py_ssize_t walk_server(walk_t *w, const unsigned char *buf, Py_ssize_t len, int *stop) {
    Py_ssize_t pos = rest_of_frame(&w->server_skip, len);
    *stop = 0;
    while (len - pos >= 5) {
        unsigned char code = buf[pos];
        int64_t length = frame_length(buf + pos + 1);
        int counted = code == 'Z' || code == 'E' || code == 't'; /* read whole */
        if (length < 4 || code == 'K' || (counted && 1 + length > w->capacity)) {
            *stop = 1;
            break;
        }
        int64_t total = 1 + length, have = len - pos;
        if (counted) {
            if (total > have) break;
            answered(w, code, buf + pos, length);
            pos += (Py_ssize_t)total;
            continue;
        }
        pos = stream_frame(&w->server_skip, total, pos, len);
    }
    return pos;
}

static PyObject *status_bytes(int status) {
    if (status < 0) return PyBytes_FromStringAndSize("", 0);
    char c = (char)status;
    return PyBytes_FromStringAndSize(&c, 1);
}

/* --- Walk: the walk on Python bytes ------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    walk_t walk;
    strings_t needles;
} WalkObject;

/* The noted Describes from Python (Session.native_state): as many Syncs before each as
 * before the one it follows, and no more than are pending. */
static int describes_from(PyObject *obj, walk_t *w) {
    PyObject *seq = PySequence_Fast(obj, "describes: expected a sequence of ints");
    if (seq == NULL) return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n > MAX_DESCRIBES) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_ValueError, "more than %d describes", MAX_DESCRIBES);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        long long ahead = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(seq, i));
        if (ahead == -1 && PyErr_Occurred()) break;
        if (ahead < (i ? w->ahead[i - 1] : 0) || ahead > w->syncs) {
            PyErr_SetString(PyExc_ValueError, "describes: out of order, or past the syncs");
            break;
        }
        w->ahead[w->describes++] = ahead;
    }
    Py_DECREF(seq);
    return PyErr_Occurred() ? -1 : 0;
}

static PyObject *describes_tuple(const walk_t *w) {
    PyObject *t = PyTuple_New(w->describes);
    for (int i = 0; t != NULL && i < w->describes; i++) {
        PyObject *ahead = PyLong_FromLongLong((long long)w->ahead[i]);
        if (ahead == NULL) Py_CLEAR(t);
        else PyTuple_SET_ITEM(t, i, ahead);
    }
    return t;
}

static int walk_setup(walk_t *w, strings_t *needles_store, PyObject *needles, PyObject *names,
                      long long max_message, long long capacity, long long syncs,
                      PyObject *describes, PyObject *status) {
    memset(w, 0, sizeof(*w));
    if (!PyBytes_Check(status) || PyBytes_GET_SIZE(status) > 1) {
        PyErr_SetString(PyExc_TypeError, "status must be bytes of length 0 or 1");
        return -1;
    }
    w->syncs = syncs;
    if (describes_from(describes, w) < 0) return -1;
    if (needles != NULL && strings_from(needles, needles_store) < 0) return -1;
    if (strings_from(names, &w->names) < 0) return -1;
    w->needles = needles_store;
    w->max_message = max_message;
    w->capacity = capacity;
    w->status = PyBytes_GET_SIZE(status) ? (unsigned char)PyBytes_AS_STRING(status)[0] : -1;
    return 0;
}

static int Walk_init(WalkObject *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"needles", "names",     "max_message", "capacity",
                               "syncs",   "describes", "status",      NULL};
    PyObject *needles, *names, *describes, *status;
    long long max_message, capacity, syncs;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOLLLOO", keywords, &needles, &names,
                                     &max_message, &capacity, &syncs, &describes, &status))
        return -1;
    strings_free(&self->needles);
    strings_free(&self->walk.names);
    return walk_setup(&self->walk, &self->needles, needles, names, max_message, capacity, syncs,
                      describes, status);
}

static void Walk_dealloc(WalkObject *self) {
    strings_free(&self->needles);
    strings_free(&self->walk.names);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

typedef Py_ssize_t (*walk_fn)(walk_t *, const unsigned char *, Py_ssize_t, int *);

static PyObject *walk_call(WalkObject *self, PyObject *data, walk_fn fn) {
    if (self->walk.needles == NULL) { /* never initialized, or a second __init__ failed */
        PyErr_SetString(PyExc_RuntimeError, "the Walk is not set up");
        return NULL;
    }
    if (!PyBytes_Check(data)) {
        PyErr_SetString(PyExc_TypeError, "expected bytes");
        return NULL;
    }
    int stop;
    Py_ssize_t n = fn(&self->walk, (const unsigned char *)PyBytes_AS_STRING(data),
                      PyBytes_GET_SIZE(data), &stop);
    return Py_BuildValue("(nO)", n, stop ? Py_True : Py_False);
}

static PyObject *Walk_client(WalkObject *self, PyObject *data) {
    return walk_call(self, data, walk_client);
}

static PyObject *Walk_server(WalkObject *self, PyObject *data) {
    return walk_call(self, data, walk_server);
}

static PyObject *Walk_state(WalkObject *self, PyObject *unused) {
    walk_t *w = &self->walk;
    PyObject *describes = describes_tuple(w);
    if (describes == NULL) return NULL;
    return Py_BuildValue("(LLLNN)", (long long)w->client_skip, (long long)w->server_skip,
                         (long long)w->syncs, describes, status_bytes(w->status));
}

static PyMethodDef walk_methods[] = {
    {"client", (PyCFunction)Walk_client, METH_O,
     "client(data) -> (bytes to relay, stop): the walk over unrelayed client bytes"},
    {"server", (PyCFunction)Walk_server, METH_O, "server(data) -> (bytes to relay, stop)"},
    {"state", (PyCFunction)Walk_state, METH_NOARGS,
     "state() -> (client_skip, server_skip, syncs, describes, status)"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject WalkType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "proxy._relay.Walk",
    .tp_basicsize = sizeof(WalkObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Walk_init,
    .tp_dealloc = (destructor)Walk_dealloc,
    .tp_methods = walk_methods,
    .tp_doc = "Walk(needles, names, max_message, capacity, syncs, describes, status): the native "
              "walk",
};

/* --- the relay thread --------------------------------------------------------------------- */

#define BUFFER_SIZE (32 * 1024)
#define WAKE_TAG UINT64_MAX

enum { CLIENT = 0, SERVER = 1 };
enum { RUNNING = 0, HANDED_BACK, ENDED };

/* One direction: bytes read from `from`, [sent, walked) cleared to go, [walked, len) not. */
typedef struct {
    unsigned char *buf;
    Py_ssize_t sent, walked, len;
} direction_t;

typedef struct {
    int fd[2];            /* CLIENT, SERVER */
    uint32_t events[2];   /* what each fd is registered for */
    uint32_t generation;  /* tells a recycled slot's events from its old pair's */
    direction_t to[2];    /* to[SERVER]: client bytes bound for the server; to[CLIENT]: back */
    walk_t walk;
    int state;
    int queued;           /* in the handed-back list */
} pair_t;

typedef struct {
    PyObject_HEAD
    pthread_mutex_t lock;
    pthread_t thread;
    int initialized, started, stopping;
    int epfd, notify_fd, wake_fd;
    strings_t needles;
    int64_t max_message;
    pair_t **pairs;
    Py_ssize_t slots;
    uint32_t generation;
    Py_ssize_t *returned; /* handles of handed-back pairs, for take() */
    Py_ssize_t returned_count;
} RelayObject;

static uint64_t tag_of(pair_t *p, Py_ssize_t handle, int side) {
    return ((uint64_t)p->generation << 32) | ((uint64_t)handle << 1) | (uint64_t)side;
}

static void set_interest(RelayObject *r, pair_t *p, Py_ssize_t handle) {
    for (int side = 0; side < 2; side++) {
        /* Read a side while its direction has room; write it while bytes wait for it. */
        direction_t *out = &p->to[1 - side], *in = &p->to[side];
        uint32_t events = (out->len < BUFFER_SIZE ? EPOLLIN : 0) |
                          (in->walked > in->sent ? EPOLLOUT : 0);
        if (events != p->events[side]) {
            struct epoll_event ev = {.events = events, .data.u64 = tag_of(p, handle, side)};
            epoll_ctl(r->epfd, EPOLL_CTL_MOD, p->fd[side], &ev);
            p->events[side] = events;
        }
    }
}

static void hand_back(RelayObject *r, pair_t *p, Py_ssize_t handle, int state) {
    if (p->state != RUNNING) return;
    p->state = state;
    epoll_ctl(r->epfd, EPOLL_CTL_DEL, p->fd[CLIENT], NULL);
    epoll_ctl(r->epfd, EPOLL_CTL_DEL, p->fd[SERVER], NULL);
    r->returned[r->returned_count++] = handle;
    p->queued = 1;
    uint64_t one = 1;
    ssize_t ignored = write(r->notify_fd, &one, sizeof(one));
    (void)ignored;
}

/* Sends what is cleared to go towards `side`. 0: fine (maybe not all sent), -1: the socket failed. */
static int flush(pair_t *p, int side) {
    direction_t *d = &p->to[side];
    while (d->walked > d->sent) {
        ssize_t n = send(p->fd[side], d->buf + d->sent, (size_t)(d->walked - d->sent),
                         MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            d->sent += n;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        return -1;
    }
    if (d->sent == d->walked && d->sent > 0) { /* keep the unwalked tail at the start */
        memmove(d->buf, d->buf + d->walked, (size_t)(d->len - d->walked));
        d->len -= d->walked;
        d->sent = d->walked = 0;
    }
    return 0;
}

/* Reads `side`'s socket into the direction towards the other side and walks it. */
static int pump(RelayObject *r, pair_t *p, Py_ssize_t handle, int side) {
    direction_t *d = &p->to[1 - side];
    if (d->len < BUFFER_SIZE) {
        ssize_t n = recv(p->fd[side], d->buf + d->len, (size_t)(BUFFER_SIZE - d->len), MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
            hand_back(r, p, handle, ENDED); /* the asyncio transport finds the end too */
            return -1;
        }
        if (n > 0) d->len += n;
    }
    int stop;
    walk_fn fn = side == CLIENT ? walk_client : walk_server;
    d->walked += fn(&p->walk, d->buf + d->walked, d->len - d->walked, &stop);
    if (stop) {
        hand_back(r, p, handle, HANDED_BACK);
        return -1;
    }
    if (flush(p, 1 - side) < 0) {
        hand_back(r, p, handle, ENDED);
        return -1;
    }
    return 0;
}

static void on_event(RelayObject *r, uint64_t tag, uint32_t events) {
    Py_ssize_t handle = (Py_ssize_t)((tag & 0xffffffffu) >> 1);
    int side = (int)(tag & 1);
    if (handle >= r->slots) return;
    pair_t *p = r->pairs[handle];
    if (p == NULL || p->state != RUNNING || p->generation != (uint32_t)(tag >> 32)) return;
    if (events & EPOLLOUT) {
        if (flush(p, side) < 0) {
            hand_back(r, p, handle, ENDED);
            return;
        }
        /* Bytes that waited for room may have a walk to finish: room is made, read on. */
    }
    if (events & (EPOLLHUP | EPOLLERR)) {
        /* Reported unasked, and on a unix socket before its last bytes are read: the asyncio
         * transport reads those, then finds the end itself. */
        hand_back(r, p, handle, ENDED);
        return;
    }
    if (events & EPOLLIN) {
        if (pump(r, p, handle, side) < 0) return;
    }
    set_interest(r, p, handle);
}

static void *relay_main(void *arg) {
    RelayObject *r = arg;
    struct epoll_event events[128];
    for (;;) {
        int n = epoll_wait(r->epfd, events, 128, -1);
        if (n < 0 && errno != EINTR) break;
        pthread_mutex_lock(&r->lock);
        if (r->stopping) {
            pthread_mutex_unlock(&r->lock);
            break;
        }
        for (int i = 0; i < n; i++) {
            if (events[i].data.u64 == WAKE_TAG) {
                uint64_t count;
                ssize_t ignored = read(r->wake_fd, &count, sizeof(count));
                (void)ignored;
                continue;
            }
            on_event(r, events[i].data.u64, events[i].events);
        }
        pthread_mutex_unlock(&r->lock);
    }
    return NULL;
}

static void lock_relay(RelayObject *r) {
    if (pthread_mutex_trylock(&r->lock) == 0) return;
    Py_BEGIN_ALLOW_THREADS pthread_mutex_lock(&r->lock);
    Py_END_ALLOW_THREADS
}

static void pair_free(pair_t *p) {
    free(p->to[0].buf);
    free(p->to[1].buf);
    strings_free(&p->walk.names);
    free(p);
}

static int Relay_init(RelayObject *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"needles", "max_message", NULL};
    PyObject *needles;
    long long max_message;
    if (self->initialized) {
        PyErr_SetString(PyExc_RuntimeError, "the relay is already set up");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OL", keywords, &needles, &max_message))
        return -1;
    if (strings_from(needles, &self->needles) < 0) return -1;
    self->max_message = max_message;
    self->initialized = 1; /* from here on, dealloc closes what was opened */
    pthread_mutex_init(&self->lock, NULL);
    self->epfd = epoll_create1(EPOLL_CLOEXEC);
    self->notify_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    self->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (self->epfd < 0 || self->notify_fd < 0 || self->wake_fd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = WAKE_TAG};
    if (epoll_ctl(self->epfd, EPOLL_CTL_ADD, self->wake_fd, &ev) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    if (pthread_create(&self->thread, NULL, relay_main, self) != 0) {
        PyErr_SetString(PyExc_OSError, "cannot start the relay thread");
        return -1;
    }
    self->started = 1;
    return 0;
}

static void relay_stop(RelayObject *self) {
    if (!self->started) return;
    lock_relay(self);
    self->stopping = 1;
    pthread_mutex_unlock(&self->lock);
    uint64_t one = 1;
    ssize_t ignored = write(self->wake_fd, &one, sizeof(one));
    (void)ignored;
    Py_BEGIN_ALLOW_THREADS pthread_join(self->thread, NULL);
    Py_END_ALLOW_THREADS
    self->started = 0;
}

static void Relay_dealloc(RelayObject *self) {
    relay_stop(self);
    for (Py_ssize_t i = 0; i < self->slots; i++)
        if (self->pairs[i] != NULL) pair_free(self->pairs[i]);
    free(self->pairs);
    free(self->returned);
    strings_free(&self->needles);
    if (self->initialized) {
        if (self->epfd >= 0) close(self->epfd);
        if (self->notify_fd >= 0) close(self->notify_fd);
        if (self->wake_fd >= 0) close(self->wake_fd);
        pthread_mutex_destroy(&self->lock);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static Py_ssize_t free_slot(RelayObject *r) {
    for (Py_ssize_t i = 0; i < r->slots; i++)
        if (r->pairs[i] == NULL) return i;
    Py_ssize_t slots = r->slots ? r->slots * 2 : 64;
    pair_t **pairs = realloc(r->pairs, (size_t)slots * sizeof(pair_t *));
    if (pairs == NULL) return -1;
    Py_ssize_t *returned = realloc(r->returned, (size_t)slots * sizeof(Py_ssize_t));
    if (returned == NULL) {
        r->pairs = pairs;
        return -1;
    }
    for (Py_ssize_t i = r->slots; i < slots; i++) pairs[i] = NULL;
    Py_ssize_t first = r->slots;
    r->pairs = pairs;
    r->returned = returned;
    r->slots = slots;
    return first;
}

/* adopt(client_fd, server_fd, names, syncs, describes, status) -> handle */
static PyObject *Relay_adopt(RelayObject *self, PyObject *args) {
    int client_fd, server_fd;
    PyObject *names, *describes, *status;
    long long syncs;
    if (!PyArg_ParseTuple(args, "iiOLOO", &client_fd, &server_fd, &names, &syncs, &describes,
                          &status))
        return NULL;
    if (!self->started) {
        PyErr_SetString(PyExc_RuntimeError, "the relay is stopped");
        return NULL;
    }
    pair_t *p = calloc(1, sizeof(pair_t));
    if (p == NULL) return PyErr_NoMemory();
    p->to[0].buf = malloc(BUFFER_SIZE);
    p->to[1].buf = malloc(BUFFER_SIZE);
    if (p->to[0].buf == NULL || p->to[1].buf == NULL) {
        pair_free(p);
        return PyErr_NoMemory();
    }
    if (walk_setup(&p->walk, NULL, NULL, names, self->max_message, BUFFER_SIZE, syncs, describes,
                   status) < 0) {
        pair_free(p);
        return NULL;
    }
    p->walk.needles = &self->needles;
    p->fd[CLIENT] = client_fd;
    p->fd[SERVER] = server_fd;
    lock_relay(self);
    Py_ssize_t handle = free_slot(self);
    if (handle < 0) {
        pthread_mutex_unlock(&self->lock);
        pair_free(p);
        return PyErr_NoMemory();
    }
    p->generation = ++self->generation;
    p->events[CLIENT] = p->events[SERVER] = EPOLLIN;
    for (int side = 0; side < 2; side++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = tag_of(p, handle, side)};
        if (epoll_ctl(self->epfd, EPOLL_CTL_ADD, p->fd[side], &ev) < 0) {
            int saved = errno;
            if (side == SERVER) epoll_ctl(self->epfd, EPOLL_CTL_DEL, p->fd[CLIENT], NULL);
            pthread_mutex_unlock(&self->lock);
            pair_free(p);
            errno = saved;
            return PyErr_SetFromErrno(PyExc_OSError);
        }
    }
    self->pairs[handle] = p;
    pthread_mutex_unlock(&self->lock);
    return PyLong_FromSsize_t(handle);
}

/* What Python needs to carry on: (ended, to_server, to_client, client_rest, server_rest,
 * client_skip, server_skip, syncs, describes, status). to_*: relayed by the walk, not yet
 * sent; *_rest: read, not yet walked. */
static PyObject *handback_tuple(pair_t *p) {
    direction_t *up = &p->to[SERVER], *down = &p->to[CLIENT];
    walk_t *w = &p->walk;
    PyObject *describes = describes_tuple(w);
    if (describes == NULL) return NULL;
    return Py_BuildValue(
        "(Oy#y#y#y#LLLNN)", p->state == ENDED ? Py_True : Py_False, up->buf + up->sent,
        up->walked - up->sent, down->buf + down->sent, down->walked - down->sent,
        up->buf + up->walked, up->len - up->walked, down->buf + down->walked,
        down->len - down->walked, (long long)w->client_skip, (long long)w->server_skip,
        (long long)w->syncs, describes, status_bytes(w->status));
}

static void forget_returned(RelayObject *r, Py_ssize_t handle) {
    for (Py_ssize_t i = 0; i < r->returned_count; i++)
        if (r->returned[i] == handle) {
            r->returned[i] = r->returned[--r->returned_count];
            return;
        }
}

/* release(handle) -> handback tuple, or None for an unknown handle: the session leaves the
 * relay now (its connection is closing). Once this returns the thread no longer touches its
 * sockets. */
static PyObject *Relay_release(RelayObject *self, PyObject *arg) {
    Py_ssize_t handle = PyLong_AsSsize_t(arg);
    if (handle == -1 && PyErr_Occurred()) return NULL;
    lock_relay(self);
    pair_t *p = handle >= 0 && handle < self->slots ? self->pairs[handle] : NULL;
    if (p == NULL) {
        pthread_mutex_unlock(&self->lock);
        Py_RETURN_NONE;
    }
    if (p->state == RUNNING) {
        p->state = HANDED_BACK;
        epoll_ctl(self->epfd, EPOLL_CTL_DEL, p->fd[CLIENT], NULL);
        epoll_ctl(self->epfd, EPOLL_CTL_DEL, p->fd[SERVER], NULL);
    }
    if (p->queued) forget_returned(self, handle);
    self->pairs[handle] = NULL;
    pthread_mutex_unlock(&self->lock);
    PyObject *result = handback_tuple(p);
    pair_free(p);
    return result;
}

/* take() -> [(handle, handback tuple)]: the sessions the thread handed back since. */
static PyObject *Relay_take(RelayObject *self, PyObject *unused) {
    uint64_t count;
    ssize_t ignored = read(self->notify_fd, &count, sizeof(count));
    (void)ignored;
    PyObject *list = PyList_New(0);
    if (list == NULL) return NULL;
    lock_relay(self);
    Py_ssize_t n = self->returned_count;
    pair_t **taken = malloc((size_t)(n ? n : 1) * sizeof(pair_t *));
    Py_ssize_t *handles = malloc((size_t)(n ? n : 1) * sizeof(Py_ssize_t));
    if (taken == NULL || handles == NULL) {
        pthread_mutex_unlock(&self->lock);
        free(taken);
        free(handles);
        Py_DECREF(list);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        handles[i] = self->returned[i];
        taken[i] = self->pairs[handles[i]];
        self->pairs[handles[i]] = NULL;
    }
    self->returned_count = 0;
    pthread_mutex_unlock(&self->lock);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *state = handback_tuple(taken[i]);
        pair_free(taken[i]);
        PyObject *item = state ? Py_BuildValue("(nN)", handles[i], state) : NULL;
        if (item == NULL || PyList_Append(list, item) < 0) {
            Py_XDECREF(item);
            Py_CLEAR(list);
            for (Py_ssize_t j = i + 1; j < n; j++) pair_free(taken[j]);
            break;
        }
        Py_DECREF(item);
    }
    free(taken);
    free(handles);
    return list;
}

static PyObject *Relay_close(RelayObject *self, PyObject *unused) {
    relay_stop(self);
    Py_RETURN_NONE;
}

static PyObject *Relay_notify_fd(RelayObject *self, void *closure) {
    return PyLong_FromLong(self->notify_fd);
}

static PyMethodDef relay_methods[] = {
    {"adopt", (PyCFunction)Relay_adopt, METH_VARARGS,
     "adopt(client_fd, server_fd, names, syncs, describes, status) -> handle"},
    {"release", (PyCFunction)Relay_release, METH_O, "release(handle) -> handback or None"},
    {"take", (PyCFunction)Relay_take, METH_NOARGS, "take() -> [(handle, handback)]"},
    {"close", (PyCFunction)Relay_close, METH_NOARGS, "stops the thread"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef relay_getset[] = {
    {"notify_fd", (getter)Relay_notify_fd, NULL, "readable when sessions were handed back", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject RelayType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "proxy._relay.Relay",
    .tp_basicsize = sizeof(RelayObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Relay_init,
    .tp_dealloc = (destructor)Relay_dealloc,
    .tp_methods = relay_methods,
    .tp_getset = relay_getset,
    .tp_doc = "Relay(needles, max_message): a thread relaying adopted sessions",
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "proxy._relay", NULL, 0, NULL};

PyMODINIT_FUNC PyInit__relay(void) {
    if (PyType_Ready(&WalkType) < 0 || PyType_Ready(&RelayType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Py_INCREF(&WalkType);
    Py_INCREF(&RelayType);
    if (PyModule_AddObject(m, "Walk", (PyObject *)&WalkType) < 0 ||
        PyModule_AddObject(m, "Relay", (PyObject *)&RelayType) < 0 ||
        PyModule_AddIntConstant(m, "BUFFER_SIZE", BUFFER_SIZE) < 0 ||
        PyModule_AddIntConstant(m, "MAX_DESCRIBES", MAX_DESCRIBES) < 0)
        return NULL;
    return m;
}
