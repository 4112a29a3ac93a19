// liburing for Swift. The C library's headers come first: liburing.h defines _GNU_SOURCE and
// _XOPEN_SOURCE, and if it pulled in libc itself the module would disagree with Glibc's about
// fd_set. <linux/io_uring.h> before <liburing.h>, so the kernel's header and liburing's copy
// (same include guard) agree.
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/select.h>
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <inttypes.h>
#include <time.h>
#include <fcntl.h>
#include <sched.h>
#include <linux/io_uring.h>
#include <liburing.h>
#include <linux/ublk_cmd.h>
