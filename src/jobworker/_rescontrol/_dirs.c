/* jobworker._rescontrol._dirs: make or remove many cgroup directories in one call.
 *
 * The resource control's background thread makes job cgroups ahead of need and removes
 * those of ended jobs, in batches.  Through os.mkdir/os.rmdir each call gives the GIL
 * back and takes it again while the starting thread and the reactor want it, and those
 * hand-offs cost more CPU than the calls themselves; here the GIL is released once per
 * batch.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <sys/stat.h>
#include <unistd.h>

/* mkdir (mode 0755) or rmdir each path, in order; a list of errnos (0: done). */
static PyObject *each(PyObject *paths_o, int remove) {
    PyObject *items = PySequence_Tuple(paths_o);
    if (!items) return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(items);
    PyObject **held = PyMem_Calloc((size_t)n + 1, sizeof(PyObject *));
    int *errs = PyMem_Calloc((size_t)n + 1, sizeof(int));
    PyObject *out = NULL;
    Py_ssize_t converted = 0;
    if (!held || !errs) {
        PyErr_NoMemory();
        goto done;
    }
    for (; converted < n; converted++) {
        if (!PyUnicode_FSConverter(PyTuple_GET_ITEM(items, converted), &held[converted]))
            goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        const char *path = PyBytes_AS_STRING(held[i]);
        int r = remove ? rmdir(path) : mkdir(path, 0755);
        errs[i] = r < 0 ? errno : 0;
    }
    Py_END_ALLOW_THREADS
    out = PyList_New(n);
    for (Py_ssize_t i = 0; out && i < n; i++) {
        PyObject *e = PyLong_FromLong(errs[i]);
        if (!e) {
            Py_CLEAR(out);
            break;
        }
        PyList_SET_ITEM(out, i, e);
    }
done:
    for (Py_ssize_t i = 0; held && i < converted; i++) Py_XDECREF(held[i]);
    PyMem_Free(held);
    PyMem_Free(errs);
    Py_DECREF(items);
    return out;
}

static PyObject *mkdirs(PyObject *self, PyObject *paths) { return each(paths, 0); }

static PyObject *rmdirs(PyObject *self, PyObject *paths) { return each(paths, 1); }

static PyMethodDef methods[] = {
    {"mkdirs", mkdirs, METH_O, "mkdirs(paths) -> [errno or 0, ...]: mkdir each (0755)."},
    {"rmdirs", rmdirs, METH_O, "rmdirs(paths) -> [errno or 0, ...]: rmdir each."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "jobworker._rescontrol._dirs",
    "Make or remove many cgroup directories with the GIL released once.", -1, methods,
};

PyMODINIT_FUNC PyInit__dirs(void) { return PyModule_Create(&module); }
