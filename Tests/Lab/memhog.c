// memhog: take MIB mebibytes of anonymous memory, write every page, then hold it.
//
//   memhog MIB [READYFILE]
//
// After every page has been written it creates READYFILE (if given), prints one line and
// sleeps until it is killed, so the caller can read cgroup counters while the memory is
// still owned. Each page gets 1 KiB of pseudo-random bytes and 3 KiB of zeros: zram can
// compress it, but not to nothing, so swapping it out costs real work and real memory.
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc < 2 || atol(argv[1]) <= 0) {
        fprintf(stderr, "usage: memhog MIB [READYFILE]\n");
        return 2;
    }
    size_t mib = (size_t)atol(argv[1]);
    size_t len = mib << 20;
    const size_t page = 4096;

    double start = now();
    uint8_t *mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
        perror("memhog: mmap");
        return 1;
    }
    uint64_t x = 0x9e3779b97f4a7c15u;
    for (size_t off = 0; off < len; off += page) {
        uint64_t *p = (uint64_t *)(mem + off);
        for (int i = 0; i < 128; i++) {  // 128 * 8 bytes = 1 KiB per page (xorshift64)
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            p[i] = x;
        }
    }
    double touched = now();

    if (argc > 2) {
        int fd = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd < 0) {
            perror("memhog: ready file");
            return 1;
        }
        close(fd);
    }
    printf("memhog: wrote %zu MiB in %.2fs, holding\n", mib, touched - start);
    fflush(stdout);
    for (;;) pause();
}
