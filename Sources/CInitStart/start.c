// outpost-init is a static executable (Package.swift) that the kernel starts
// before /proc is mounted and, under QEMU's TCG, before its random number
// generator has been seeded. Two of the Swift runtime's C++ static
// initializers, which run before main, would then stop the boot:
//
// - The backtracer's set-up asks for the runtime's own path, which a static
//   glibc can learn only from /proc/self/exe; without /proc the runtime
//   aborts ("Unable to obtain Swift runtime path"). With SWIFT_ROOT set it
//   takes its root from there and never looks the path up.
// - Hashing's per-process seed comes from getrandom(2), which blocks until the
//   kernel's CRNG is ready: about 1 s after /init starts under TCG, spent
//   waiting. SWIFT_DETERMINISTIC_HASHING fixes the seed instead. Early boot
//   hashes only what it trusts (the measured command line, the partition
//   table, the builder's module list), so a fixed seed is no flooding risk
//   here; outpostd, which handles the network's input, gets a random one.
//
// This constructor's priority (101) runs it before every initializer of
// default priority, the runtime's among them. main unsets both variables
// again (outpost_init_forget_runtime_settings), so the exec'd outpostd and its
// children start with the kernel's environment only.

#include <stdlib.h>
#include "CInitStart.h"

static const char *const names[] = {"SWIFT_ROOT", "SWIFT_DETERMINISTIC_HASHING"};
static const char *const values[] = {"/", "1"};
static int set[2];

__attribute__((constructor(101))) static void outpost_init_set_runtime_settings(void) {
    for (int i = 0; i < 2; i++) {
        if (getenv(names[i]) == NULL) {
            set[i] = setenv(names[i], values[i], 0) == 0;
        }
    }
}

void outpost_init_forget_runtime_settings(void) {
    for (int i = 0; i < 2; i++) {
        if (set[i]) {
            unsetenv(names[i]);
            set[i] = 0;
        }
    }
}
