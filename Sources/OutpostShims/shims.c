#include "OutpostShims.h"

#include <errno.h>
#include <linux/dm-ioctl.h>
#include <linux/blkpg.h>
#include <linux/loop.h>
#include <linux/watchdog.h>
#include <signal.h>
#include <stddef.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <linux/memfd.h>
#include <malloc.h>
#include <sys/mman.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <linux/if_tun.h>
#include <linux/sockios.h>
#include <sys/socket.h>
#include <sys/prctl.h>
#include <sys/reboot.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/vfs.h>
#include <unistd.h>

int OutpostShims_finit_module(int fd, const char *params, int flags) {
    return (int)syscall(SYS_finit_module, fd, params ? params : "", flags);
}

unsigned int OutpostShims_major(uint64_t dev) { return major((dev_t)dev); }
unsigned int OutpostShims_minor(uint64_t dev) { return minor((dev_t)dev); }
uint64_t OutpostShims_makedev(unsigned int ma, unsigned int mi) {
    return (uint64_t)makedev(ma, mi);
}

int OutpostShims_reboot(int command) {
    switch (command) {
    case OutpostShims_RebootRestart: return reboot(RB_AUTOBOOT);
    case OutpostShims_RebootPowerOff: return reboot(RB_POWER_OFF);
    case OutpostShims_RebootDisableCAD: return reboot(RB_DISABLE_CAD);
    default: errno = EINVAL; return -1;
    }
}

int OutpostShims_statfs_type(const char *path, int64_t *type) {
    struct statfs fs;
    if (statfs(path, &fs) != 0) return -1;
    *type = (int64_t)fs.f_type;
    return 0;
}

// --- device-mapper ---------------------------------------------------------

// Room for the header, one target spec and a long verity parameter string.
#define DM_BUFFER_SIZE 16384

static int dm_init(struct dm_ioctl *io, size_t size, const char *name) {
    memset(io, 0, size);
    // 4.0.0: the kernel accepts any request whose major matches and whose
    // minor is not newer than its own, so the oldest minor always works.
    io->version[0] = 4;
    io->version[1] = 0;
    io->version[2] = 0;
    io->data_size = (uint32_t)size;
    io->data_start = sizeof(struct dm_ioctl);
    if (strlen(name) >= sizeof(io->name)) {
        errno = ENAMETOOLONG;
        return -1;
    }
    strcpy(io->name, name);
    return 0;
}

int OutpostShims_dm_create(int control_fd, const char *name, const char *uuid,
                           unsigned int *ma, unsigned int *mi) {
    struct dm_ioctl io;
    if (dm_init(&io, sizeof(io), name) != 0) return -1;
    if (uuid) {
        if (strlen(uuid) >= sizeof(io.uuid)) {
            errno = ENAMETOOLONG;
            return -1;
        }
        strcpy(io.uuid, uuid);
    }
    if (ioctl(control_fd, DM_DEV_CREATE, &io) != 0) return -1;
    *ma = major((dev_t)io.dev);
    *mi = minor((dev_t)io.dev);
    return 0;
}

int OutpostShims_dm_load_table(int control_fd, const char *name,
                               uint64_t start_sector, uint64_t sector_count,
                               const char *target_type, const char *params,
                               int readonly) {
    // 8-byte aligned so the kernel can read the u64 fields in place.
    _Alignas(8) unsigned char buffer[DM_BUFFER_SIZE];
    struct dm_ioctl *io = (struct dm_ioctl *)buffer;
    struct dm_target_spec *spec;
    size_t header = sizeof(struct dm_ioctl);
    size_t param_len = strlen(params) + 1;
    size_t spec_len = sizeof(struct dm_target_spec) + param_len;
    spec_len = (spec_len + 7) & ~(size_t)7;
    if (header + spec_len > sizeof(buffer) ||
        strlen(target_type) >= DM_MAX_TYPE_NAME) {
        errno = E2BIG;
        return -1;
    }
    if (dm_init(io, header + spec_len, name) != 0) return -1;
    io->target_count = 1;
    if (readonly) io->flags |= DM_READONLY_FLAG;
    spec = (struct dm_target_spec *)(buffer + header);
    spec->sector_start = start_sector;
    spec->length = sector_count;
    spec->next = (uint32_t)spec_len;
    strcpy(spec->target_type, target_type);
    memcpy(buffer + header + sizeof(struct dm_target_spec), params, param_len);
    int result = ioctl(control_fd, DM_TABLE_LOAD, io);
    int saved = errno;
    // A dm-crypt table carries the key in hex: leave no copy on this stack.
    explicit_bzero(buffer, sizeof(buffer));
    errno = saved;
    return result;
}

int OutpostShims_dm_resume(int control_fd, const char *name) {
    struct dm_ioctl io;
    if (dm_init(&io, sizeof(io), name) != 0) return -1;
    return ioctl(control_fd, DM_DEV_SUSPEND, &io);
}

int OutpostShims_dm_remove(int control_fd, const char *name) {
    struct dm_ioctl io;
    if (dm_init(&io, sizeof(io), name) != 0) return -1;
    return ioctl(control_fd, DM_DEV_REMOVE, &io);
}

// --- processes ---------------------------------------------------------------

int OutpostShims_spawn(const char *path, char *const argv[], char *const envp[],
                       int stdin_fd, int stdout_fd, int stderr_fd, pid_t *pid) {
    pid_t child = fork();
    if (child < 0) return -1;
    if (child == 0) {
        sigset_t none;
        struct sigaction dfl;
        int sig;
        sigemptyset(&none);
        memset(&dfl, 0, sizeof(dfl));
        dfl.sa_handler = SIG_DFL;
        for (sig = 1; sig < NSIG; sig++) {
            sigaction(sig, &dfl, NULL); // fails harmlessly for SIGKILL/SIGSTOP
        }
        sigprocmask(SIG_SETMASK, &none, NULL);
        if (stdin_fd >= 0 && dup2(stdin_fd, 0) < 0) _exit(126);
        if (stdout_fd >= 0 && dup2(stdout_fd, 1) < 0) _exit(126);
        if (stderr_fd >= 0 && dup2(stderr_fd, 2) < 0) _exit(126);
        execve(path, argv, envp);
        _exit(127);
    }
    *pid = child;
    return 0;
}

void OutpostShims_malloc_limit_arenas(int arenas) {
    mallopt(M_ARENA_MAX, arenas);
}

int OutpostShims_malloc_trim(void) {
    return malloc_trim(0);
}

int OutpostShims_madvise_pageout(uintptr_t start, size_t length) {
    return madvise((void *)start, length, 21 /* MADV_PAGEOUT */);
}

int OutpostShims_kernel_log_size(void) {
    return (int)syscall(SYS_syslog, 10 /* SYSLOG_ACTION_SIZE_BUFFER */, NULL, 0);
}

int OutpostShims_kernel_log_read_all(char *buffer, int length) {
    return (int)syscall(SYS_syslog, 3 /* SYSLOG_ACTION_READ_ALL */, buffer, length);
}

int OutpostShims_memfd(const char *name) {
    return (int)syscall(SYS_memfd_create, name, MFD_CLOEXEC);
}

int OutpostShims_blkpg_resize_partition(int disk_fd, int partno,
                                        int64_t start_bytes, int64_t length_bytes) {
    struct blkpg_partition part;
    struct blkpg_ioctl_arg arg;
    memset(&part, 0, sizeof(part));
    memset(&arg, 0, sizeof(arg));
    part.pno = partno;
    part.start = start_bytes;
    part.length = length_bytes;
    arg.op = BLKPG_RESIZE_PARTITION;
    arg.datalen = sizeof(part);
    arg.data = &part;
    return ioctl(disk_fd, BLKPG, &arg);
}

// --- hardware watchdog -------------------------------------------------------

int OutpostShims_watchdog_getsupport(int fd, char identity[33], uint32_t *options) {
    struct watchdog_info info;
    memset(&info, 0, sizeof(info));
    if (ioctl(fd, WDIOC_GETSUPPORT, &info) != 0) return -1;
    memcpy(identity, info.identity, sizeof(info.identity));
    identity[sizeof(info.identity)] = 0;
    *options = info.options;
    return 0;
}

int OutpostShims_watchdog_settimeout(int fd, int *seconds) {
    return ioctl(fd, WDIOC_SETTIMEOUT, seconds);
}

int OutpostShims_watchdog_gettimeout(int fd, int *seconds) {
    return ioctl(fd, WDIOC_GETTIMEOUT, seconds);
}

int OutpostShims_watchdog_keepalive(int fd) {
    int dummy = 0;
    return ioctl(fd, WDIOC_KEEPALIVE, &dummy);
}

int OutpostShims_watchdog_getbootstatus(int fd, int *flags) {
    return ioctl(fd, WDIOC_GETBOOTSTATUS, flags);
}

void OutpostShims_set_thread_name(const char *name) {
    prctl(PR_SET_NAME, (unsigned long)name, 0, 0, 0);
}

int OutpostShims_eventfd(void) {
    return eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
}

// --- the app network's links ----------------------------------------------

static int link_ioctl(unsigned long request, struct ifreq *request_data) {
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int result = ioctl(fd, request, request_data);
    int saved = errno;
    close(fd);
    errno = saved;
    return result;
}

static int copy_name(char target[IFNAMSIZ], const char *name) {
    if (strlen(name) >= IFNAMSIZ) { errno = ENAMETOOLONG; return -1; }
    strncpy(target, name, IFNAMSIZ - 1);
    target[IFNAMSIZ - 1] = 0;
    return 0;
}

static int bridge_name_ioctl(unsigned long request, const char *name) {
    char bridge[IFNAMSIZ] = {0};
    if (copy_name(bridge, name) < 0) return -1;
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int result = ioctl(fd, request, bridge);
    int saved = errno;
    close(fd);
    errno = saved;
    return result;
}

int OutpostShims_bridge_add(const char *name) { return bridge_name_ioctl(SIOCBRADDBR, name); }
int OutpostShims_bridge_delete(const char *name) { return bridge_name_ioctl(SIOCBRDELBR, name); }

int OutpostShims_bridge_add_port(const char *bridge, const char *port) {
    struct ifreq request;
    memset(&request, 0, sizeof(request));
    if (copy_name(request.ifr_name, bridge) < 0) return -1;
    unsigned int index = if_nametoindex(port);
    if (index == 0) return -1;
    request.ifr_ifindex = (int)index;
    return link_ioctl(SIOCBRADDIF, &request);
}

int OutpostShims_tap_set_persistent(const char *name, int persist) {
    struct ifreq request;
    memset(&request, 0, sizeof(request));
    if (copy_name(request.ifr_name, name) < 0) return -1;
    request.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
    int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
    if (fd < 0) return -1;
    int result = ioctl(fd, TUNSETIFF, &request);
    if (result == 0) result = ioctl(fd, TUNSETPERSIST, persist ? 1 : 0);
    int saved = errno;
    close(fd);
    errno = saved;
    return result;
}

int OutpostShims_link_set_up(const char *name, int up) {
    struct ifreq request;
    memset(&request, 0, sizeof(request));
    if (copy_name(request.ifr_name, name) < 0) return -1;
    if (link_ioctl(SIOCGIFFLAGS, &request) < 0) return -1;
    if (up) request.ifr_flags |= IFF_UP; else request.ifr_flags &= ~IFF_UP;
    return link_ioctl(SIOCSIFFLAGS, &request);
}

int OutpostShims_link_set_ipv4(const char *name, uint32_t address, uint32_t netmask) {
    struct ifreq request;
    memset(&request, 0, sizeof(request));
    if (copy_name(request.ifr_name, name) < 0) return -1;
    struct sockaddr_in *in = (struct sockaddr_in *)&request.ifr_addr;
    in->sin_family = AF_INET;
    in->sin_addr.s_addr = address;
    if (link_ioctl(SIOCSIFADDR, &request) < 0) return -1;
    in = (struct sockaddr_in *)&request.ifr_netmask;
    in->sin_family = AF_INET;
    in->sin_addr.s_addr = netmask;
    return link_ioctl(SIOCSIFNETMASK, &request);
}

// --- loop devices ------------------------------------------------------------

int OutpostShims_loop_get_free(int control_fd) {
    return ioctl(control_fd, LOOP_CTL_GET_FREE);
}

int OutpostShims_loop_configure(int loop_fd, int backing_fd, int autoclear) {
    struct loop_config config;
    memset(&config, 0, sizeof(config));
    config.fd = (uint32_t)backing_fd;
    if (autoclear) config.info.lo_flags = LO_FLAGS_AUTOCLEAR;
    if (ioctl(loop_fd, LOOP_CONFIGURE, &config) == 0) return 0;
    if (errno != EINVAL && errno != ENOTTY) return -1;
    // Kernels before 5.8 have no LOOP_CONFIGURE: bind, then set the flags.
    if (ioctl(loop_fd, LOOP_SET_FD, backing_fd) != 0) return -1;
    struct loop_info64 info;
    memset(&info, 0, sizeof(info));
    if (autoclear) info.lo_flags = LO_FLAGS_AUTOCLEAR;
    if (ioctl(loop_fd, LOOP_SET_STATUS64, &info) != 0) {
        int saved = errno;
        (void)ioctl(loop_fd, LOOP_CLR_FD, 0);
        errno = saved;
        return -1;
    }
    return 0;
}

int OutpostShims_loop_clear(int loop_fd) {
    return ioctl(loop_fd, LOOP_CLR_FD, 0);
}
