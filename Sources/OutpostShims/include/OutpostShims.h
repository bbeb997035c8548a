#ifndef OUTPOST_SHIMS_H
#define OUTPOST_SHIMS_H
// The project's only hand-written C. Each symbol exists because Swift
// cannot import a function-like macro or a variadic function, because a
// kernel ABI struct is easier to fill in C, or because the code must run in
// a forked child where only async-signal-safe calls are allowed.
//
// Every function returns 0 on success or -1 with errno set, like the
// syscalls it wraps; the Swift side turns that into a typed error.

#include <stdint.h>
#include <sys/types.h>

// glibc has no finit_module() wrapper and Swift cannot call the variadic
// syscall(2); modules are loaded from an fd so no module bytes pass through
// userspace buffers.
int OutpostShims_finit_module(int fd, const char *params, int flags);

// major()/minor()/makedev() are function-like macros in <sys/sysmacros.h>.
unsigned int OutpostShims_major(uint64_t dev);
unsigned int OutpostShims_minor(uint64_t dev);
uint64_t OutpostShims_makedev(unsigned int major, unsigned int minor);

// <sys/reboot.h> is not part of Swift's Glibc module, and its RB_* values
// exceed Int32 in places; PID 1 needs restart, power-off and CAD control.
enum {
    OutpostShims_RebootRestart = 0,   // RB_AUTOBOOT
    OutpostShims_RebootPowerOff = 1,  // RB_POWER_OFF
    OutpostShims_RebootDisableCAD = 2 // RB_DISABLE_CAD: Ctrl-Alt-Del sends SIGINT to PID 1
};
int OutpostShims_reboot(int command);

// <sys/vfs.h> is not part of Swift's Glibc module; statfs(2)'s f_type
// tells whether "/" is still the initramfs (ramfs/tmpfs) before deleting it.
int OutpostShims_statfs_type(const char *path, int64_t *type);

// Device-mapper control: struct dm_ioctl plus its trailing target specs is
// a variable-length kernel ABI buffer, and the DM_* request numbers are
// _IOWR() macros. `control_fd` is an open /dev/mapper/control.

// DM_DEV_CREATE: creates an empty mapped device; returns its dev_t parts.
int OutpostShims_dm_create(int control_fd, const char *name, const char *uuid,
                           unsigned int *major, unsigned int *minor);
// DM_TABLE_LOAD with one target into the inactive table. `readonly` sets
// DM_READONLY_FLAG so the mapped device refuses writes.
int OutpostShims_dm_load_table(int control_fd, const char *name,
                               uint64_t start_sector, uint64_t sector_count,
                               const char *target_type, const char *params,
                               int readonly);
// DM_DEV_SUSPEND without DM_SUSPEND_FLAG: swaps in the loaded table and
// resumes I/O ("resume" in dmsetup terms).
int OutpostShims_dm_resume(int control_fd, const char *name);
// DM_DEV_REMOVE: tears down a half-built device after a failed setup.
int OutpostShims_dm_remove(int control_fd, const char *name);
// (OutpostShims_dm_load_table wipes its ioctl buffer afterwards: a dm-crypt
// table holds the vault key in hex.)

// fork()+execve() for a child of PID 1: the child clears the signal mask
// and restores default dispositions (PID 1 blocks the signals it waits for
// with sigwaitinfo, and a blocked mask is inherited through exec). Between
// fork and exec only async-signal-safe calls are made.
// `stdin_fd`, `stdout_fd` and `stderr_fd` (or -1 to inherit) become the
// child's standard input, output and error.
int OutpostShims_spawn(const char *path, char *const argv[], char *const envp[],
                       int stdin_fd, int stdout_fd, int stderr_fd, pid_t *pid);

// syslog(2): the kernel's log buffer size (SYSLOG_ACTION_SIZE_BUFFER), and a
// copy of the whole buffer (SYSLOG_ACTION_READ_ALL, nothing consumed). The
// copy returns the number of bytes, or -1 and errno.
int OutpostShims_kernel_log_size(void);
int OutpostShims_kernel_log_read_all(char *buffer, int length);

// glibc's allocator for a small long-running daemon: at most `arenas` malloc
// arenas (each thread otherwise gets its own, and each keeps its freed pages),
// set before any thread starts; and malloc_trim(0), which returns every free
// page of every arena to the kernel. Returns what malloc_trim returned.
void OutpostShims_malloc_limit_arenas(int arenas);
int OutpostShims_malloc_trim(void);

// madvise(MADV_PAGEOUT): asks the kernel to reclaim the pages of [start,
// start + length) that only this process maps (Linux 5.4+). For a read-only
// file mapping the pages are read again from the file when next touched.
int OutpostShims_madvise_pageout(uintptr_t start, size_t length);

// memfd_create(name, MFD_CLOEXEC): an anonymous file in memory, for a helper's
// output that is shown only when the helper fails. -1 and errno on failure.
int OutpostShims_memfd(const char *name);

// BLKPG_RESIZE_PARTITION: tells the kernel a partition grew while other
// partitions of the disk are in use (BLKRRPART would fail with EBUSY).
// `struct blkpg_ioctl_arg` wraps a `struct blkpg_partition` by pointer.
int OutpostShims_blkpg_resize_partition(int disk_fd, int partno,
                                        int64_t start_bytes, int64_t length_bytes);

// prctl(PR_SET_NAME) for the calling thread: prctl is variadic and
// pthread_setname_np is hidden behind _GNU_SOURCE in Swift's Glibc module.
// Names (15 bytes at most) show in /proc/1/task/*/comm.
void OutpostShims_set_thread_name(const char *name);

// eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK): OutpostPlatform's stop signal and
// wake-ups. <sys/eventfd.h> is not part of Swift's Glibc module. One fd that
// poll(2) can watch beside sockets, created close-on-exec atomically so a
// concurrent spawn never inherits it.
int OutpostShims_eventfd(void);

// --- hardware watchdog (<linux/watchdog.h>) --------------------------------
// WDIOC_* request numbers are function-like macros (_IOR/_IOWR), which Swift
// cannot import, and ioctl(2) is variadic. `fd` is an open /dev/watchdogN.

// WDIOC_GETSUPPORT: the driver's identity (NUL-terminated, at most 32 bytes
// plus NUL into `identity`, which must hold 33) and its WDIOF_* options.
int OutpostShims_watchdog_getsupport(int fd, char identity[33], uint32_t *options);
// WDIOC_SETTIMEOUT: asks for `*seconds`; the driver writes back what it set.
int OutpostShims_watchdog_settimeout(int fd, int *seconds);
// WDIOC_GETTIMEOUT: the timeout in force.
int OutpostShims_watchdog_gettimeout(int fd, int *seconds);
// WDIOC_KEEPALIVE: one feed.
int OutpostShims_watchdog_keepalive(int fd);
// WDIOC_GETBOOTSTATUS: WDIOF_* flags for why the last boot happened
// (WDIOF_CARDRESET: the watchdog reset the machine).
int OutpostShims_watchdog_getbootstatus(int fd, int *flags);
// WDIOF_* option bits are plain macros, but repeated here so Swift sees them
// without importing the kernel UAPI header into the Swift module.
enum {
    OutpostShims_WDIOF_CARDRESET = 0x0020,
    OutpostShims_WDIOF_SETTIMEOUT = 0x0080,
    OutpostShims_WDIOF_MAGICCLOSE = 0x0100,
    OutpostShims_WDIOF_KEEPALIVEPING = 0x8000
};

// --- the app network's links (bridge, taps) ---------------------------------
// The slot has no iproute2; these are the few link operations the app network
// needs, as ioctls whose request numbers are macros (TUNSETIFF is _IOW) and
// whose argument is a struct ifreq Swift cannot fill portably. Each acts in
// the calling thread's network namespace and returns 0, or -1 with errno set.

// SIOCBRADDBR / SIOCBRDELBR: creates or deletes a bridge named `name`.
int OutpostShims_bridge_add(const char *name);
int OutpostShims_bridge_delete(const char *name);
// SIOCBRADDIF: makes the link `port` a port of `bridge`.
int OutpostShims_bridge_add_port(const char *bridge, const char *port);
// /dev/net/tun + TUNSETIFF (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR) + TUNSETPERSIST:
// a tap that outlives this call (persist = 1) until deleted (persist = 0),
// so it exists and is in the bridge before QEMU opens it by name.
int OutpostShims_tap_set_persistent(const char *name, int persist);
// SIOCGIFFLAGS + SIOCSIFFLAGS: IFF_UP on or off.
int OutpostShims_link_set_up(const char *name, int up);
// SIOCSIFADDR + SIOCSIFNETMASK: the link's IPv4 address and mask (network byte order).
int OutpostShims_link_set_ipv4(const char *name, uint32_t address, uint32_t netmask);

// --- loop devices (<linux/loop.h>) -------------------------------------------
// The slot has no losetup; the vault's file on PERSIST becomes a block device
// for dm-crypt through these. LOOP_* request numbers are plain numbers, but
// ioctl(2) is variadic and struct loop_config is a kernel ABI struct.

// LOOP_CTL_GET_FREE on an open /dev/loop-control: the number N of a free
// /dev/loopN (created if none is free), or -1 with errno set.
int OutpostShims_loop_get_free(int control_fd);
// LOOP_CONFIGURE (falling back to LOOP_SET_FD + LOOP_SET_STATUS64 on kernels
// without it): binds `backing_fd` to the open loop device. With `autoclear`
// (LO_FLAGS_AUTOCLEAR) the kernel detaches the file when the last opener of
// the loop device closes it, so a crash never leaks a bound loop device.
// EBUSY: another process bound this loop device first.
int OutpostShims_loop_configure(int loop_fd, int backing_fd, int autoclear);
// LOOP_CLR_FD: detaches now, or (while the device is still open elsewhere)
// as soon as the last opener closes it.
int OutpostShims_loop_clear(int loop_fd);

#endif
