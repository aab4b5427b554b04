/* jobworker._rescontrol._dirs: make, remove and list cgroup directories.
 *
 * The resource control's background thread makes job cgroups ahead of need and removes
 * those of ended jobs, in batches.  Through os.mkdir/os.rmdir each call gives the GIL
 * back and takes it again while the starting thread and the reactor want it, and those
 * hand-offs cost more CPU than the calls themselves; here the GIL is released once per
 * batch.
 *
 * It also lists a cgroup's subdirectories with the directory's fd above stderr:
 * os.listdir and os.scandir take the lowest free number, which is 0, 1 or 2 in a host
 * that closed its stdio (a daemon), and that thread runs while the host's own code
 * does: its print() would find the directory at fd 1.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
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

/* The names of path's subdirectories (symlinks not followed). */
static PyObject *subdirs(PyObject *self, PyObject *path_o) {
    PyObject *path_b;
    if (!PyUnicode_FSConverter(path_o, &path_b)) return NULL;
    int fd;
    Py_BEGIN_ALLOW_THREADS
    fd = open(PyBytes_AS_STRING(path_b), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0 && fd <= 2) {
        int moved = fcntl(fd, F_DUPFD_CLOEXEC, 3);
        int err = errno;
        close(fd);
        errno = err;
        fd = moved;
    }
    Py_END_ALLOW_THREADS
    if (fd < 0) {
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, path_o);
        Py_DECREF(path_b);
        return NULL;
    }
    DIR *dir = fdopendir(fd);
    if (!dir) {
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, path_o);
        close(fd);
        Py_DECREF(path_b);
        return NULL;
    }
    PyObject *out = PyList_New(0);
    struct dirent *e;
    while (out && (errno = 0, e = readdir(dir))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        int is_dir = e->d_type == DT_DIR;
        if (e->d_type == DT_UNKNOWN) {
            struct stat st;
            is_dir = fstatat(dirfd(dir), e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
                     S_ISDIR(st.st_mode);
        }
        if (!is_dir) continue;
        PyObject *name = PyUnicode_DecodeFSDefault(e->d_name);
        if (!name || PyList_Append(out, name) < 0) Py_CLEAR(out);
        Py_XDECREF(name);
    }
    if (out && errno) {
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, path_o);
        Py_CLEAR(out);
    }
    closedir(dir);
    Py_DECREF(path_b);
    return out;
}

static PyMethodDef methods[] = {
    {"mkdirs", mkdirs, METH_O, "mkdirs(paths) -> [errno or 0, ...]: mkdir each (0755)."},
    {"rmdirs", rmdirs, METH_O, "rmdirs(paths) -> [errno or 0, ...]: rmdir each."},
    {"subdirs", subdirs, METH_O,
     "subdirs(path) -> [name, ...]: its subdirectories, listed through an fd above 2."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "jobworker._rescontrol._dirs",
    "Make, remove and list cgroup directories (see the source's header).", -1, methods,
};

PyMODINIT_FUNC PyInit__dirs(void) { return PyModule_Create(&module); }
