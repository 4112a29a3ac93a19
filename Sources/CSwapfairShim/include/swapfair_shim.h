// Small C helpers for what Swift cannot call directly: declarations that need _GNU_SOURCE
// (which must not be defined in a header Swift imports), variadic functions and macros.
#ifndef SWAPFAIR_SHIM_H
#define SWAPFAIR_SHIM_H

#include <stdint.h>

/// The credentials of the process at the other end of a Unix socket (SO_PEERCRED).
/// Returns 0, or -1 with errno set.
int swapfair_peer_credentials(int fd, int32_t *pid, uint32_t *uid, uint32_t *gid);

/// prctl(PR_SET_IO_FLUSHER, 1): the process's I/O may be needed to free memory, so the kernel
/// must not make its allocations wait on that I/O. Returns 0, or -1 with errno set.
int swapfair_set_io_flusher(void);

/// prctl(PR_SET_NAME): names the calling thread (the kernel keeps 15 bytes). Returns 0, or -1
/// with errno set.
int swapfair_set_thread_name(const char *name);

/// O_DIRECT, which differs by architecture and is hidden from Swift's Glibc module.
int swapfair_o_direct(void);

/// O_NOATIME, hidden from Swift's Glibc module likewise.
int swapfair_o_noatime(void);

/// statfs(2)'s f_type for a path (the file system's magic number), which Swift's Glibc module
/// does not export. Returns 0, or -1 with errno set.
int swapfair_fs_type(const char *path, int64_t *type);

/// fallocate(2) with FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE: the range reads as zeros and
/// frees its blocks (fallocate needs _GNU_SOURCE). Returns 0, or -1 with errno set.
int swapfair_punch_hole(int fd, int64_t offset, int64_t length);

/// swapoff(2) (<sys/swap.h> is not in Swift's Glibc module). Returns 0, or -1 with errno set.
int swapfair_swapoff(const char *path);

/// pidfd_open(2): a file descriptor that refers to process `pid` for as long as it is open, so
/// a later call cannot reach another process that reused the number. Returns the descriptor, or
/// -1 with errno set (syscall(2) is variadic, so Swift cannot call it).
int swapfair_pidfd_open(int32_t pid);

/// process_madvise(2) on the process behind `pidfd`, over `count` ranges given as address and
/// length pairs. Returns the bytes advised, or -1 with errno set.
int64_t swapfair_process_madvise(int pidfd, const uint64_t *ranges, int count, int advice);

/// mallopt for a process whose memory is locked, where freed heap pages stay resident: two malloc
/// arenas at most (M_ARENA_MAX; else each thread may get one of its own) and a fixed mmap threshold
/// of 128 KiB (M_MMAP_THRESHOLD; else it rises after the first large free, and large buffers then
/// come from, and stay in, the heap), so that large buffers are unmapped when freed.
/// Returns 0, or -1 when a setting was refused.
int swapfair_malloc_for_locked_memory(void);

#endif
