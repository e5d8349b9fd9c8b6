// Linux interfaces the Glibc module does not import: timerfd, accept4, and the peer
// credentials of a Unix socket. _GNU_SOURCE is not defined here (it would make these
// headers differ from the Glibc module's), so the GNU-only pieces are declared by hand.
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/types.h>

#ifndef SO_PEERCRED
#define SO_PEERCRED 17
#endif
#ifndef SO_PEERGROUPS
#define SO_PEERGROUPS 59
#endif

extern int accept4(int fd, struct sockaddr *addr, socklen_t *addrlen, int flags);
extern int pipe2(int pipefd[2], int flags);

/// Accepts a connection as a non-blocking, close-on-exec socket.
static inline int clinux_accept_nonblocking(int fd) {
  return accept4(fd, 0, 0, SOCK_CLOEXEC | SOCK_NONBLOCK);
}

/// The layout of the kernel's struct ucred.
struct clinux_ucred {
  pid_t pid;
  uid_t uid;
  gid_t gid;
};

/// The uid, gid and pid of the process at the other end of a Unix socket; 0 on success.
static inline int clinux_peer_credentials(int fd, uid_t *uid, gid_t *gid, pid_t *pid) {
  struct clinux_ucred cred;
  socklen_t len = sizeof(cred);
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return -1;
  *uid = cred.uid;
  *gid = cred.gid;
  *pid = cred.pid;
  return 0;
}

/// The supplementary groups of the peer (Linux 4.13+); returns the count, or -1.
static inline int clinux_peer_groups(int fd, gid_t *groups, int capacity) {
  socklen_t len = (socklen_t)(sizeof(gid_t) * (unsigned)capacity);
  if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len) != 0) return -1;
  return (int)(len / sizeof(gid_t));
}

#include <sys/prctl.h>

/// Makes this process the reaper of its orphaned descendants (PR_SET_CHILD_SUBREAPER), so
/// that what an activation client leaves behind is reaped here; 0 on success.
static inline int clinux_set_child_subreaper(void) {
  return prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
}

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

extern int pthread_sigmask(int how, const sigset_t *set, sigset_t *oldset);

/// Starts `path` with `argv` and `envp` (no shell, no PATH search) as a child whose standard
/// input, output and error are `in_fd`, `out_fd`, `err_fd`, in a process group of its own,
/// with every signal at its default and none blocked, and no other descriptor of this
/// process open (descriptors are not inherited by accident: a file some thread opened
/// without O_CLOEXEC, or one the service manager passed). With `cgroup_procs_fd` >= 0 (the
/// `cgroup.procs` of a cgroup, open for writing), the child moves itself there before it
/// runs the program: nothing the program starts can be outside it. Returns the child's
/// pid, or -errno (the child's own errors, execve's included, come back through a
/// close-on-exec pipe).
///
/// A fork (not clone3 with CLONE_INTO_CGROUP: systemd's seccomp filters answer clone3
/// with ENOSYS, since they cannot inspect its flags): between fork and execve the child
/// calls only async-signal-safe functions.
static inline int clinux_spawn(const char *path, char *const argv[], char *const envp[], int in_fd, int out_fd,
                               int err_fd, int cgroup_procs_fd) {
  int report[2];
  if (pipe2(report, O_CLOEXEC) != 0) return -errno;
  sigset_t all, previous;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &previous);
  pid_t pid = fork();
  if (pid == 0) {
    struct sigaction standard;
    memset(&standard, 0, sizeof standard);
    standard.sa_handler = SIG_DFL;
    for (int signal_number = 1; signal_number < 65; signal_number++) {
      if (signal_number != SIGKILL && signal_number != SIGSTOP) sigaction(signal_number, &standard, 0);
    }
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, 0);
    // The program runs at the ordinary priority, not at the agent's (raising the nice value
    // needs no privilege).
    setpriority(PRIO_PROCESS, 0, 0);
    int code = 0;
    if (cgroup_procs_fd >= 0 && write(cgroup_procs_fd, "0", 1) != 1) {
      code = errno;
    } else if (setpgid(0, 0) != 0 || dup2(in_fd, 0) < 0 || dup2(out_fd, 1) < 0 || dup2(err_fd, 2) < 0) {
      code = errno;
    } else {
      // Every descriptor above 2 closes at execve (close_range, Linux 5.11), the report
      // pipe's too; older kernels: one by one.
      if (syscall(SYS_close_range, 3U, ~0U, CLOSE_RANGE_CLOEXEC) != 0) {
        for (int fd = 3; fd < 65536; fd++) fcntl(fd, F_SETFD, FD_CLOEXEC);
      }
      execve(path, argv, envp);
      code = errno;
    }
    ssize_t ignored = write(report[1], &code, sizeof code);
    (void)ignored;
    _exit(127);
  }
  int saved = errno;
  pthread_sigmask(SIG_SETMASK, &previous, 0);
  close(report[1]);
  if (pid < 0) {
    close(report[0]);
    return -saved;
  }
  int code = 0;
  ssize_t count;
  do {
    count = read(report[0], &code, sizeof code);
  } while (count < 0 && errno == EINTR);
  close(report[0]);
  if (count == (ssize_t)sizeof code) {
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    return -code;
  }
  return (int)pid;
}

/// Reaps one exited child of this process (or orphan, as its subreaper) without waiting:
/// its pid, 0 when none has exited, -1 when there are none (ECHILD).
static inline int clinux_reap_any(void) {
  int status;
  pid_t pid;
  do {
    pid = waitpid(-1, &status, WNOHANG);
  } while (pid < 0 && errno == EINTR);
  return (int)pid;
}
