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
