/* jobworker._spawn: start one job's process, and create its log.
 *
 * Why C: the child must join the job's cgroups *before* the user's program runs its
 * first instruction, and Python offers no safe hook between fork and exec in a threaded
 * process (preexec_fn runs Python code after fork, where another thread may have held
 * a lock).  Here the child runs only async-signal-safe system calls.
 *
 * The child is a clone(CLONE_VM | CLONE_VFORK | CLONE_FILES): it shares the worker's
 * memory and descriptor table, and the calling thread sleeps until it has executed the
 * program or failed.  Sharing the table is what lets the child create the job's log,
 * named after its own pid ({base}_{pid}.log, or .1.log ... if that name is taken), in
 * the worker's table: the log exists, with its final name, before the program runs,
 * and a log that cannot be created means the program never runs.  (Before, the worker
 * created an unnamed O_TMPFILE and linked it once the pid was known: two metadata
 * operations where this is one.)  The kernel returns the pidfd (CLONE_PIDFD).
 *
 * The child, in order: creates the log (O_CREAT | O_EXCL | O_NOFOLLOW, mode 0600,
 * relative to the log directory's fd), takes a private copy of the descriptor table
 * with everything above stderr close-on-exec, leaves the worker's session (setsid),
 * joins each cgroup by writing "0" (itself) into its cgroup.procs, points stdin at
 * /dev/null and stdout and stderr at the capture pipe, changes directory, restores
 * default signal dispositions and an empty mask, and executes the first candidate path
 * that works.  A failure is recorded as (stage, errno) in the plan, which the child
 * shares with the parent; the parent then reaps the child and removes the log before
 * returning.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000
#endif
#ifndef CLOSE_RANGE_UNSHARE
#define CLOSE_RANGE_UNSHARE (1U << 1)
#endif
#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

enum {
    STAGE_OK = 0,
    STAGE_CGROUP = 1,
    STAGE_FDS = 2,
    STAGE_CWD = 3,
    STAGE_EXEC = 4,
    STAGE_LOG = 5,
};

/* Tests set this to take the path of kernels without close_range. */
static int without_close_range;

/* Log names tried: {base}_{pid}.log, then {base}_{pid}.1.log ... .999.log. */
#define LOG_NAMES 1000
/* The child's stack: its frames are small (no recursion, no libc buffers). */
#define CHILD_STACK (64 * 1024)

struct plan {
    char **paths;   /* candidate executables, NULL-terminated */
    char **argv;
    char **envp;
    char **cgroups; /* cgroup.procs files, NULL-terminated */
    const char *cwd;
    int out_fd;
    int max_fd;
    int low_end; /* > 0: out_fd is below it (a low slot) */
    int log_dir_fd;
    const char *log_base;
    /* Written by the child (shared memory), read by the parent once clone returns. */
    int stage, err; /* what failed, if anything */
    int log_fd;
    char log_name[NAME_MAX + 1];
};

/* The parent reads this once clone returns, which CLONE_VFORK delays until the child
 * has executed the program or exited: if the child exited, this was written first.  So
 * no error pipe, and no wait for exec to close one (40 us here). */
static void report(struct plan *p, int stage, int err) {
    p->stage = stage;
    p->err = err;
}

static char *put_str(char *at, const char *end, const char *s) {
    while (*s && at < end) *at++ = *s++;
    return at;
}

static char *put_uint(char *at, const char *end, unsigned long v) {
    char digits[24];
    int n = 0;
    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n && at < end) *at++ = digits[--n];
    return at;
}

/* In the child, still sharing the worker's descriptor table: the new log's fd lands in
 * the worker's table, and its name in the plan.  Returns 0 or an errno. */
static int create_log(struct plan *p) {
    unsigned long pid = (unsigned long)syscall(SYS_getpid);
    const char *end = p->log_name + sizeof p->log_name - 1;
    for (int n = 0; n < LOG_NAMES; n++) {
        char *at = put_str(p->log_name, end, p->log_base);
        at = put_str(at, end, "_");
        at = put_uint(at, end, pid);
        if (n) {
            at = put_str(at, end, ".");
            at = put_uint(at, end, (unsigned long)n);
        }
        at = put_str(at, end, ".log");
        if (at == end) return ENAMETOOLONG;
        *at = 0;
        /* O_EXCL never opens what exists, a symlink included: a stale log, a pid-reuse
         * leftover or a planted link makes us take the next name. */
        int fd = openat(p->log_dir_fd, p->log_name,
                        O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd >= 0) {
            p->log_fd = fd;
            return 0;
        }
        if (errno != EEXIST) return errno;
    }
    return EEXIST;
}

/* Kernels before 5.9 have no close_range: mark the child's fds above stderr
 * close-on-exec one by one, up to the size of its fd table (FDSize in
 * /proc/self/status), not up to the fd limit, which the worker raises to the hard
 * limit (a million on many systems).  (Listing /proc/self/fd instead cost 2.3 us per
 * open fd here, against 0.15 us per number for fcntl.) */
static void cloexec_open_fds(int max_fd) {
    char buf[4096];
    int fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t n = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (n > 0) {
            buf[n] = 0;
            const char *at = strstr(buf, "\nFDSize:");
            if (at) {
                int size = 0;
                for (at += 9; *at == ' ' || *at == '\t'; at++) {
                }
                while (*at >= '0' && *at <= '9') size = size * 10 + (*at++ - '0');
                if (size > 0 && size - 1 < max_fd) max_fd = size - 1;
            }
        }
    }
    for (fd = 3; fd <= max_fd; fd++) fcntl(fd, F_SETFD, FD_CLOEXEC);
}

/* Runs in the child: it shares the parent's memory, so it writes nothing but its own
 * stack and the plan's result fields, and makes only system calls. */
static void __attribute__((noinline)) child(struct plan *p) {
    int i, fd, err;

    err = create_log(p);
    if (err) {
        report(p, STAGE_LOG, err);
        return;
    }
    /* Leave the shared table for a private copy before touching stdin/out/err, which
     * are the worker's too.  Everything the worker holds (other jobs' pipes, logs,
     * pidfds, this job's log) must not leak into the job: a leaked pipe write end would
     * keep another job's output open forever.
     *
     * With the low slot (see take_slot), the copy is of the fds below the slot
     * only: close_range(UNSHARE) over a range reaching past the last fd copies just
     * what lies below it.  Copying the whole table would touch every open file of the
     * worker, three per running job, at every start. */
    int copied = 0;
    if (!without_close_range) {
        if (p->low_end > 0 &&
            syscall(SYS_close_range, p->low_end, ~0U, CLOSE_RANGE_UNSHARE) == 0) {
            /* (CLOSE_RANGE_CLOEXEC came in 5.11, UNSHARE in 5.9.) */
            if (p->low_end > 3 &&
                syscall(SYS_close_range, 3, p->low_end - 1, CLOSE_RANGE_CLOEXEC) < 0) {
                for (fd = 3; fd < p->low_end; fd++) fcntl(fd, F_SETFD, FD_CLOEXEC);
            }
            copied = 1;
        } else if (syscall(SYS_close_range, 3, ~0U,
                           CLOSE_RANGE_UNSHARE | CLOSE_RANGE_CLOEXEC) == 0) {
            copied = 1;
        }
    }
    if (!copied) {
        if (unshare(CLONE_FILES) < 0) {
            report(p, STAGE_FDS, errno);
            return;
        }
        cloexec_open_fds(p->max_fd);
    }
    if (setsid() < 0) {
        report(p, STAGE_FDS, errno);
        return;
    }
    for (i = 0; p->cgroups[i]; i++) {
        fd = open(p->cgroups[i], O_WRONLY | O_CLOEXEC);
        if (fd < 0 || write(fd, "0", 1) != 1) {
            report(p, STAGE_CGROUP, errno);
            return;
        }
        close(fd);
    }
    /* out_fd is > 2 (the parent guarantees it), so these dup2s cannot clobber it. */
    fd = open("/dev/null", O_RDONLY);
    if (fd < 0 || dup2(fd, 0) < 0 || dup2(p->out_fd, 1) < 0 || dup2(p->out_fd, 2) < 0) {
        report(p, STAGE_FDS, errno);
        return;
    }
    if (fd > 2) close(fd);
    if (p->cwd && chdir(p->cwd) < 0) {
        report(p, STAGE_CWD, errno);
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
    report(p, STAGE_EXEC, err);
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

/* Each thread that spawns keeps one child stack: the thread sleeps while its child
 * runs, so one is enough, and mapping a fresh one per start would cost page faults and
 * a TLB shootdown each time.  Unmapped when the thread exits. */
static pthread_key_t stack_key;
static pthread_once_t stack_once = PTHREAD_ONCE_INIT;
static int stack_key_ok;

static void free_stack(void *stack) { munmap(stack, CHILD_STACK); }

static void make_stack_key(void) { stack_key_ok = pthread_key_create(&stack_key, free_stack) == 0; }

static char *child_stack(void) {
    pthread_once(&stack_once, make_stack_key);
    if (!stack_key_ok) {
        errno = EAGAIN;
        return NULL;
    }
    char *stack = pthread_getspecific(stack_key);
    if (!stack) {
        stack = mmap(NULL, CHILD_STACK, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
        if (stack == MAP_FAILED) return NULL;
        if (pthread_setspecific(stack_key, stack) != 0) {
            munmap(stack, CHILD_STACK);
            errno = ENOMEM;
            return NULL;
        }
    }
    return stack;
}

/* Two descriptors reserved when this module is imported, while the table is still
 * small, so their numbers are low: between starts both are one /dev/null open file;
 * during a start the second holds the capture pipe.  One start at a time uses them
 * (others copy the whole table instead of waiting). */
static pthread_mutex_t slots_lock = PTHREAD_MUTEX_INITIALIZER;

static int slot_null = -1, slot_out = -1;

#ifndef KCMP_FILE
#define KCMP_FILE 0
#endif

static int same_file(int a, int b) {
    pid_t me = getpid();
    return syscall(SYS_kcmp, me, me, KCMP_FILE, a, b) == 0;
}

static void reserve_slots(void) {
    /* Above stderr even if this process has closed one of 0-2. */
    int tmp = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (tmp < 0) return;
    int null = fcntl(tmp, F_DUPFD_CLOEXEC, 3), out = fcntl(tmp, F_DUPFD_CLOEXEC, 3);
    close(tmp);
    if (null < 0 || out < 0) {
        if (null >= 0) close(null);
        if (out >= 0) close(out);
        return;
    }
    slot_null = null;
    slot_out = out;
}

/* Point the slot at out_fd; returns 1 if the plan uses it. */
static int take_slot(struct plan *p) {
    if (slot_null < 0 || pthread_mutex_trylock(&slots_lock) != 0) return 0;
    /* Still ours?  Code that closed them (a daemonizing close-all, say) may have had
     * the numbers reused for its own files, which dup3 would then replace.  Give the
     * slots up for good rather than risk that. */
    if (!same_file(slot_null, slot_out)) {
        slot_null = slot_out = -1;
        pthread_mutex_unlock(&slots_lock);
        return 0;
    }
    /* dup3 keeps it close-on-exec: another thread's fork+exec must not inherit a job's
     * pipe. */
    if (dup3(p->out_fd, slot_out, O_CLOEXEC) < 0) {
        pthread_mutex_unlock(&slots_lock);
        return 0;
    }
    p->out_fd = slot_out;
    p->low_end = slot_out + 1;
    return 1;
}

/* Drop the parent's reference to the pipe: its write end must close with the child. */
static void release_slot(void) {
    dup3(slot_null, slot_out, O_CLOEXEC);
    pthread_mutex_unlock(&slots_lock);
}

static int child_main(void *arg) {
    child(arg);
    _exit(127);
}

PyDoc_STRVAR(spawn_doc,
"spawn(paths, argv, envp, cwd, out_fd, cgroup_procs, log_dir_fd, log_base)\n"
"    -> (pid, pidfd, log_fd, log_name, stage, errno)\n\n"
"Start a process as described in the module docstring.  On success stage is 0,\n"
"pidfd refers to the new, unreaped child and log_fd (write-only, close-on-exec) to\n"
"its new log, named log_name (bytes) in the directory log_dir_fd.  Otherwise the\n"
"child was reaped and its log removed already, the other fields are -1 (and b''),\n"
"and (stage, errno) say what failed: 1 joining a cgroup, 2 setting up fds or the\n"
"session, 3 changing directory, 4 executing, 5 creating the log.");

static PyObject *spawn(PyObject *self, PyObject *args) {
    PyObject *paths_o, *argv_o, *envp_o, *cwd_o, *cg_o, *base_o;
    int out_fd, log_dir_fd;
    if (!PyArg_ParseTuple(args, "OOOOiOiO", &paths_o, &argv_o, &envp_o, &cwd_o, &out_fd, &cg_o,
                          &log_dir_fd, &base_o))
        return NULL;
    if (out_fd <= 2) {
        PyErr_SetString(PyExc_ValueError, "out_fd must be greater than 2");
        return NULL;
    }

    struct plan p = {0};
    struct strv paths = {0}, argv = {0}, envp = {0}, cgroups = {0};
    PyObject *cwd_b = NULL, *base_b = NULL, *result = NULL;
    p.out_fd = out_fd;
    p.log_dir_fd = log_dir_fd;
    p.log_fd = -1;
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
    if (!PyUnicode_FSConverter(base_o, &base_b)) goto done;
    p.log_base = PyBytes_AS_STRING(base_b);
    char *stack = child_stack();
    if (!stack) {
        PyErr_SetFromErrno(PyExc_OSError);
        goto done;
    }
    long open_max = sysconf(_SC_OPEN_MAX);
    p.max_fd = open_max > 0 && open_max < 1 << 20 ? (int)open_max : 1 << 16;

    pid_t pid;
    int pidfd = -1, saved_errno = 0, slot;
    sigset_t all, old;
    Py_BEGIN_ALLOW_THREADS
    slot = take_slot(&p);
    /* No signal handler of the parent may run in the child, which shares its memory;
     * the child resets dispositions before it unblocks. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pid = clone(child_main, stack + CHILD_STACK,
                CLONE_VM | CLONE_VFORK | CLONE_FILES | CLONE_PIDFD | SIGCHLD, &p, &pidfd);
    saved_errno = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (slot) release_slot();
    if (pid > 0 && p.stage != STAGE_OK) {
        /* The child failed and exited: reap it, and remove its log, before saying so. */
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
        }
        close(pidfd);
        if (p.log_fd >= 0) {
            unlinkat(log_dir_fd, p.log_name, 0);
            close(p.log_fd);
        }
    }
    Py_END_ALLOW_THREADS

    if (pid < 0) {
        errno = saved_errno;
        PyErr_SetFromErrno(PyExc_OSError);
    } else if (p.stage != STAGE_OK) {
        result = Py_BuildValue("(iiiyii)", -1, -1, -1, "", p.stage, p.err);
    } else {
        result = Py_BuildValue("(iiiyii)", (int)pid, pidfd, p.log_fd, p.log_name, STAGE_OK, 0);
        if (!result) {
            /* No way to hand the job over: take it down rather than leak it. */
            syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, NULL, 0);
            while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
            }
            close(pidfd);
            unlinkat(log_dir_fd, p.log_name, 0);
            close(p.log_fd);
        }
    }

done:
    Py_XDECREF(cwd_b);
    Py_XDECREF(base_b);
    strv_free(&paths);
    strv_free(&argv);
    strv_free(&envp);
    strv_free(&cgroups);
    return result;
}

static PyObject *set_without_close_range(PyObject *self, PyObject *arg) {
    int on = PyObject_IsTrue(arg);
    if (on < 0) return NULL;
    without_close_range = on;
    Py_RETURN_NONE;
}

static PyObject *slots(PyObject *self, PyObject *unused) {
    return Py_BuildValue("(ii)", slot_null, slot_out);
}

static PyMethodDef methods[] = {
    {"spawn", spawn, METH_VARARGS, spawn_doc},
    {"set_without_close_range", set_without_close_range, METH_O,
     "set_without_close_range(on): start as on kernels without close_range (for tests)."},
    {"slots", slots, METH_NOARGS,
     "slots() -> (null, out): the reserved descriptors, or -1s if given up (for tests)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "jobworker._spawn",
    "Start a job's process: its log created, own session, cgroups joined before exec.",
    -1, methods,
};

PyMODINIT_FUNC PyInit__spawn(void) {
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    if (slot_null < 0) reserve_slots();
    if (PyModule_AddIntConstant(m, "STAGE_OK", STAGE_OK) < 0 ||
        PyModule_AddIntConstant(m, "STAGE_CGROUP", STAGE_CGROUP) < 0 ||
        PyModule_AddIntConstant(m, "STAGE_FDS", STAGE_FDS) < 0 ||
        PyModule_AddIntConstant(m, "STAGE_CWD", STAGE_CWD) < 0 ||
        PyModule_AddIntConstant(m, "STAGE_EXEC", STAGE_EXEC) < 0 ||
        PyModule_AddIntConstant(m, "STAGE_LOG", STAGE_LOG) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
