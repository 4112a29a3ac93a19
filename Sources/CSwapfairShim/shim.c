#define _GNU_SOURCE
#include "swapfair_shim.h"
#include <errno.h>
#include <fcntl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/swap.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>
#include <sys/vfs.h>

#ifndef PR_SET_IO_FLUSHER
#define PR_SET_IO_FLUSHER 57
#endif

int swapfair_peer_credentials(int fd, int32_t *pid, uint32_t *uid, uint32_t *gid) {
    struct ucred cred;
    socklen_t len = sizeof cred;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return -1;
    *pid = cred.pid;
    *uid = cred.uid;
    *gid = cred.gid;
    return 0;
}

int swapfair_set_io_flusher(void) { return prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0); }

int swapfair_set_thread_name(const char *name) { return prctl(PR_SET_NAME, (unsigned long)name, 0, 0, 0); }

int swapfair_o_direct(void) { return O_DIRECT; }

int swapfair_o_noatime(void) { return O_NOATIME; }

int swapfair_fs_type(const char *path, int64_t *type) {
    struct statfs s;
    if (statfs(path, &s) != 0) return -1;
    *type = (int64_t)s.f_type;
    return 0;
}

int swapfair_punch_hole(int fd, int64_t offset, int64_t length) {
    return fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length);
}

int swapfair_swapoff(const char *path) {
    return swapoff(path);
}

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_process_madvise
#define SYS_process_madvise 440
#endif

int swapfair_pidfd_open(int32_t pid) { return (int)syscall(SYS_pidfd_open, (pid_t)pid, 0); }

int64_t swapfair_process_madvise(int pidfd, const uint64_t *ranges, int count, int advice) {
    // The kernel takes at most UIO_MAXIOV (1024) ranges a call.
    struct iovec iov[1024];
    if (count < 0 || count > 1024) { errno = EINVAL; return -1; }
    for (int i = 0; i < count; i++) {
        iov[i].iov_base = (void *)(uintptr_t)ranges[2 * i];
        iov[i].iov_len = (size_t)ranges[2 * i + 1];
    }
    return (int64_t)syscall(SYS_process_madvise, pidfd, iov, (size_t)count, advice, 0u);
}

#include <malloc.h>

int swapfair_malloc_for_locked_memory(void) {
    if (mallopt(M_ARENA_MAX, 2) != 1) return -1;
    return mallopt(M_MMAP_THRESHOLD, 128 << 10) == 1 ? 0 : -1;
}

