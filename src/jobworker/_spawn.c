/* jobworker._spawn: start one job's process.
 *
 * Why C: the child must join the job's cgroups *before* the user's program runs its
 * first instruction, and Python offers no safe hook between fork and exec in a threaded
 * process (preexec_fn runs Python code after fork, where another thread may have held
 * a lock).  Here the child runs only async-signal-safe system calls.
 *
 * The child, in order: leaves the worker's session (setsid), joins each cgroup by
 * writing "0" (itself) into its cgroup.procs, points stdin at /dev/null and stdout and
 * stderr at the capture pipe, marks every other fd close-on-exec, changes directory,
 * restores default signal dispositions and an empty mask, and executes the first
 * candidate path that works.  A failure is written to a close-on-exec pipe as
 * (stage, errno); the parent reaps such a child before returning.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

enum { STAGE_OK = 0, STAGE_CGROUP = 1, STAGE_FDS = 2, STAGE_CWD = 3, STAGE_EXEC = 4 };

struct plan {
    char **paths;   /* candidate executables, NULL-terminated */
    char **argv;
    char **envp;
    char **cgroups; /* cgroup.procs files, NULL-terminated */
    const char *cwd;
    int out_fd;
    int err_fd; /* write end of the error pipe, O_CLOEXEC */
    int max_fd;
};

static void report(int fd, int stage, int err) {
    int msg[2] = {stage, err};
    ssize_t unused = write(fd, msg, sizeof msg);
    (void)unused;
}

/* Runs in the vfork child: it shares the parent's memory, so it writes nothing but its
 * own stack and makes only system calls. */
static void __attribute__((noinline)) child(const struct plan *p) {
    int i, fd, err;

    if (setsid() < 0) {
        report(p->err_fd, STAGE_FDS, errno);
        return;
    }
    for (i = 0; p->cgroups[i]; i++) {
        fd = open(p->cgroups[i], O_WRONLY | O_CLOEXEC);
        if (fd < 0 || write(fd, "0", 1) != 1) {
            report(p->err_fd, STAGE_CGROUP, errno);
            return;
        }
        close(fd);
    }
    /* out_fd is > 2 (the parent guarantees it), so these dup2s cannot clobber it. */
    fd = open("/dev/null", O_RDONLY);
    if (fd < 0 || dup2(fd, 0) < 0 || dup2(p->out_fd, 1) < 0 || dup2(p->out_fd, 2) < 0) {
        report(p->err_fd, STAGE_FDS, errno);
        return;
    }
    if (fd > 2) close(fd);
    /* Everything the worker holds (other jobs' pipes, logs, pidfds) must not leak into
     * the job: a leaked pipe write end would keep another job's output open forever. */
    if (syscall(SYS_close_range, 3, ~0U, CLOSE_RANGE_CLOEXEC) < 0) {
        for (fd = 3; fd <= p->max_fd; fd++) {
            if (fd != p->err_fd) fcntl(fd, F_SETFD, FD_CLOEXEC);
        }
    }
    if (p->cwd && chdir(p->cwd) < 0) {
        report(p->err_fd, STAGE_CWD, errno);
        return;
    }
    /* Python ignores SIGPIPE and SIGXFSZ; ignored dispositions survive exec, and a job
     * must die of a broken pipe as it would under a shell. */
    for (i = 1; i < NSIG; i++) {
        struct sigaction sa;
        if (sigaction(i, NULL, &sa) == 0 && sa.sa_handler != SIG_DFL) {
            sa.sa_handler = SIG_DFL;
            sa.sa_flags = 0;
            sigemptyset(&sa.sa_mask);
            sigaction(i, &sa, NULL);
        }
    }
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);

    /* execvp's rules: skip ENOENT/ENOTDIR candidates, remember EACCES, stop on others. */
    err = ENOENT;
    for (i = 0; p->paths[i]; i++) {
        execve(p->paths[i], p->argv, p->envp);
        if (errno == EACCES) {
            err = EACCES;
        } else if (errno != ENOENT && errno != ENOTDIR) {
            err = errno;
            break;
        }
    }
    report(p->err_fd, STAGE_EXEC, err);
}

/* A NULL-terminated vector of C strings pointing into bytes objects it holds (the
 * fs-encoded form of each str item), so no string is copied. */
struct strv {
    char **v;
    PyObject **held;
    Py_ssize_t n;
};

static void strv_free(struct strv *s) {
    for (Py_ssize_t i = 0; i < s->n; i++) Py_DECREF(s->held[i]);
    PyMem_Free(s->held);
    PyMem_Free(s->v);
    s->v = NULL;
    s->held = NULL;
    s->n = 0;
}

static int strv_from(PyObject *seq, struct strv *s) {
    PyObject *fast = PySequence_Fast(seq, "expected a sequence");
    if (!fast) return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    s->v = PyMem_Calloc((size_t)n + 1, sizeof(char *));
    s->held = PyMem_Calloc((size_t)n + 1, sizeof(PyObject *));
    if (!s->v || !s->held) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *b = NULL;
        if (!PyUnicode_FSConverter(PySequence_Fast_GET_ITEM(fast, i), &b)) {
            Py_DECREF(fast);
            return -1;
        }
        s->held[s->n++] = b;
        s->v[i] = PyBytes_AS_STRING(b);
    }
    Py_DECREF(fast);
    return 0;
}

PyDoc_STRVAR(spawn_doc,
"spawn(paths, argv, envp, cwd, out_fd, cgroup_procs) -> (pid, pidfd, stage, errno)\n\n"
"Start a process as described in the module docstring.  On success stage is 0 and\n"
"pidfd refers to the new, unreaped child.  Otherwise the child was reaped already,\n"
"pid and pidfd are -1, and (stage, errno) say what failed: 1 joining a cgroup,\n"
"2 setting up fds or the session, 3 changing directory, 4 executing.");

static PyObject *spawn(PyObject *self, PyObject *args) {
    PyObject *paths_o, *argv_o, *envp_o, *cwd_o, *cg_o;
    int out_fd;
    if (!PyArg_ParseTuple(args, "OOOOiO", &paths_o, &argv_o, &envp_o, &cwd_o, &out_fd, &cg_o))
        return NULL;
    if (out_fd <= 2) {
        PyErr_SetString(PyExc_ValueError, "out_fd must be greater than 2");
        return NULL;
    }

    struct plan p = {0};
    struct strv paths = {0}, argv = {0}, envp = {0}, cgroups = {0};
    PyObject *cwd_b = NULL, *result = NULL;
    int pipefd[2] = {-1, -1};
    p.out_fd = out_fd;
    if (strv_from(paths_o, &paths) < 0 || strv_from(argv_o, &argv) < 0 ||
        strv_from(envp_o, &envp) < 0 || strv_from(cg_o, &cgroups) < 0)
        goto done;
    p.paths = paths.v;
    p.argv = argv.v;
    p.envp = envp.v;
    p.cgroups = cgroups.v;
    if (cwd_o != Py_None) {
        if (!PyUnicode_FSConverter(cwd_o, &cwd_b)) goto done;
        p.cwd = PyBytes_AS_STRING(cwd_b);
    }
    if (pipe2(pipefd, O_CLOEXEC) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        goto done;
    }
    p.err_fd = pipefd[1];
    long open_max = sysconf(_SC_OPEN_MAX);
    p.max_fd = open_max > 0 && open_max < 1 << 20 ? (int)open_max : 1 << 16;

    pid_t pid;
    int pidfd = -1, msg[2] = {STAGE_OK, 0}, saved_errno = 0;
    ssize_t got = 0;
    sigset_t all, old;
    Py_BEGIN_ALLOW_THREADS
    /* No signal handler of the parent may run in the vfork child, which shares its
     * memory; the child resets dispositions before it unblocks. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pid = vfork();
    if (pid == 0) {
        child(&p);
        _exit(127);
    }
    saved_errno = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (pid > 0) {
        /* Take the pidfd while the child is certainly unreaped: only this worker reaps
         * it, so the pid cannot have been recycled yet. */
        pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
        if (pidfd < 0) saved_errno = errno;
        close(pipefd[1]);
        pipefd[1] = -1;
        do {
            got = read(pipefd[0], msg, sizeof msg);
        } while (got < 0 && errno == EINTR);
        if (got > 0 || pidfd < 0) {
            /* The child failed (or we cannot supervise it): reap it before saying so. */
            if (pidfd < 0) kill(pid, SIGKILL);
            while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
            }
            if (pidfd >= 0) close(pidfd);
        }
    }
    Py_END_ALLOW_THREADS

    if (pid < 0) {
        errno = saved_errno;
        PyErr_SetFromErrno(PyExc_OSError);
    } else if (pidfd < 0) {
        errno = saved_errno;
        PyErr_SetFromErrno(PyExc_OSError);
    } else if (got > 0) {
        result = Py_BuildValue("(iiii)", -1, -1, msg[0], msg[1]);
    } else {
        result = Py_BuildValue("(iiii)", (int)pid, pidfd, STAGE_OK, 0);
    }

done:
    if (pipefd[0] >= 0) close(pipefd[0]);
    if (pipefd[1] >= 0) close(pipefd[1]);
    Py_XDECREF(cwd_b);
    strv_free(&paths);
    strv_free(&argv);
    strv_free(&envp);
    strv_free(&cgroups);
    return result;
}

static PyMethodDef methods[] = {
    {"spawn", spawn, METH_VARARGS, spawn_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "jobworker._spawn",
    "Start a job's process: own session, cgroups joined before exec, output to a pipe.",
    -1, methods,
};

PyMODINIT_FUNC PyInit__spawn(void) {
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    if (PyModule_AddIntConstant(m, "STAGE_OK", STAGE_OK) < 0 ||
        PyModule_AddIntConstant(m, "STAGE_CGROUP", STAGE_CGROUP) < 0 ||
        PyModule_AddIntConstant(m, "STAGE_FDS", STAGE_FDS) < 0 ||
        PyModule_AddIntConstant(m, "STAGE_CWD", STAGE_CWD) < 0 ||
        PyModule_AddIntConstant(m, "STAGE_EXEC", STAGE_EXEC) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
