// libsystemd's sd-bus for Swift (Debian: libsystemd-dev). Only the non-variadic calls are usable.
#include <stdint.h>
#include <systemd/sd-bus.h>
