#include <netlink/netlink.h>
#include <netlink/msg.h>
#include <netlink/cache.h>
#include <netlink/route/link.h>
#include <netlink/route/addr.h>
#include <netlink/route/rtnl.h>
#include <linux/rtnetlink.h>
#include <linux/if.h>

// IFF_LOWER_UP is an enum in <linux/if.h> that clashes with <net/if.h> in
// Swift's Glibc import; a constant gives Swift one unambiguous value.
static const unsigned int OutpostNetlink_IFF_LOWER_UP = IFF_LOWER_UP;

// setns(2) is declared by glibc only under _GNU_SOURCE, which Swift's Glibc module does not
// define; the test harness and a namespaced manager need it to enter a network namespace.
extern int setns(int fd, int nstype);
static const int OutpostNetlink_CLONE_NEWNET = 0x40000000;
