// OpenSSL (libssl3, Debian's) for OutpostHTTP's TLS client. The helpers here
// exist because Swift cannot import OpenSSL's function-like macros, and
// because OpenSSL's own socket BIO writes with write(2), which raises SIGPIPE
// in a daemon whose peer has gone; ours sends with MSG_NOSIGNAL.
#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <sys/socket.h>
#include <errno.h>
#include <stdint.h>
#include <pthread.h>

// SSL_set_tlsext_host_name is a macro over SSL_ctrl.
static inline int COpenSSL_set_sni(SSL *ssl, const char *name) {
    return (int)SSL_set_tlsext_host_name(ssl, name);
}

// SSL_CTX_set_min_proto_version is a macro over SSL_CTX_ctrl.
static inline int COpenSSL_require_tls12(SSL_CTX *ctx) {
    return (int)SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
}

// SSL_OP_IGNORE_UNEXPECTED_EOF is a cast expression Swift does not import. A
// close-delimited HTTP body ends without close_notify on many servers; the
// HTTP layer checks lengths itself.
static inline void COpenSSL_ignore_unexpected_eof(SSL_CTX *ctx) {
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
}

static inline int COpenSSL_bio_write(BIO *b, const char *buf, int len) {
    int fd = (int)(intptr_t)BIO_get_data(b);
    ssize_t n;
    BIO_clear_retry_flags(b);
    do { n = send(fd, buf, (size_t)len, MSG_NOSIGNAL); } while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) BIO_set_retry_write(b);
    return (int)n;
}

static inline int COpenSSL_bio_read(BIO *b, char *buf, int len) {
    int fd = (int)(intptr_t)BIO_get_data(b);
    ssize_t n;
    BIO_clear_retry_flags(b);
    do { n = recv(fd, buf, (size_t)len, 0); } while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) BIO_set_retry_read(b);
    return (int)n;
}

static inline long COpenSSL_bio_ctrl(BIO *b, int cmd, long num, void *ptr) {
    (void)b; (void)num; (void)ptr;
    return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

// A function-local static: Swift emits the inline functions it calls, not
// file-scope variables of a header.
static inline BIO_METHOD **COpenSSL_socket_method_slot(void) {
    static BIO_METHOD *method;
    return &method;
}

static inline void COpenSSL_make_socket_method(void) {
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "outpost socket");
    if (m == NULL) return;
    BIO_meth_set_write(m, COpenSSL_bio_write);
    BIO_meth_set_read(m, COpenSSL_bio_read);
    BIO_meth_set_ctrl(m, COpenSSL_bio_ctrl);
    *COpenSSL_socket_method_slot() = m;
}

// A BIO over a connected (non-blocking) socket the caller keeps owning.
// Returns NULL when OpenSSL cannot allocate one.
static inline BIO *COpenSSL_socket_bio(int fd) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, COpenSSL_make_socket_method);
    BIO_METHOD *method = *COpenSSL_socket_method_slot();
    if (method == NULL) return NULL;
    BIO *b = BIO_new(method);
    if (b == NULL) return NULL;
    BIO_set_data(b, (void *)(intptr_t)fd);
    BIO_set_init(b, 1);
    return b;
}
