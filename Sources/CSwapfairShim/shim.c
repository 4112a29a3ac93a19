#define _GNU_SOURCE
#include "swapfair_shim.h"
#include <errno.h>
#include <fcntl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/swap.h>
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
