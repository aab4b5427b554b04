/* jobworker._signalfd: signalfd(2), which Python's signal module lacks.
 *
 * The reactor thread receives the "pipe has data" signals of its jobs' pipes (fasync,
 * see _pipewatch.py) through a signalfd that epoll watches, so they are never
 * delivered as signals.  A thin wrapper: no state here.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <signal.h>
#include <stddef.h>
#include <sys/signalfd.h>
#include <unistd.h>

static PyObject *py_signalfd(PyObject *self, PyObject *args) {
    PyObject *signals;
    int flags;
    if (!PyArg_ParseTuple(args, "Oi:signalfd", &signals, &flags)) return NULL;
    sigset_t mask;
    sigemptyset(&mask);
    PyObject *seq = PySequence_Fast(signals, "signals must be a sequence of ints");
    if (!seq) return NULL;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
        long sig = PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, i));
        if (sig == -1 && PyErr_Occurred()) {
            Py_DECREF(seq);
            return NULL;
        }
        if (sig < 1 || sig >= NSIG || sigaddset(&mask, (int)sig) < 0) {
            Py_DECREF(seq);
            PyErr_Format(PyExc_ValueError, "invalid signal number %ld", sig);
            return NULL;
        }
    }
    Py_DECREF(seq);
    int fd = signalfd(-1, &mask, flags);
    if (fd < 0) return PyErr_SetFromErrno(PyExc_OSError);
    PyObject *result = PyLong_FromLong(fd);
    if (!result) close(fd); /* nobody would ever close it */
    return result;
}

static PyMethodDef methods[] = {
    {"signalfd", py_signalfd, METH_VARARGS, "signalfd(signals, flags) -> a new signalfd"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "jobworker._signalfd", "signalfd(2).", -1, methods,
};

PyMODINIT_FUNC PyInit__signalfd(void) {
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    if (PyModule_AddIntConstant(m, "SFD_NONBLOCK", SFD_NONBLOCK) < 0 ||
        PyModule_AddIntConstant(m, "SFD_CLOEXEC", SFD_CLOEXEC) < 0 ||
        PyModule_AddIntConstant(m, "SIGINFO_SIZE", sizeof(struct signalfd_siginfo)) < 0 ||
        PyModule_AddIntConstant(m, "FD_OFFSET", offsetof(struct signalfd_siginfo, ssi_fd)) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
