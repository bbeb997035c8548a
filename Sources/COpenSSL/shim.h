#define OPENSSL_SUPPRESS_DEPRECATED  // the delegated EC key below uses the legacy EC_KEY_METHOD on purpose
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

// A P-256 key whose private half lives elsewhere (a TPM): a legacy EC_KEY with
// its own EC_KEY_METHOD, whose ECDSA callbacks hand the digest to `sign`.
// OpenSSL 3 treats an EC_KEY with a non-default method as "foreign" and keeps
// X509_sign, EVP_DigestSign and libssl's CertificateVerify on that method,
// while the hashing stays in the default provider. (The tpm2 provider cannot
// do this: it takes over the TLS transcript digests, or loses the signature.)
// EVP_PKEY_assign_EC_KEY and EC_KEY_get_ex_new_index are macros, and the
// callbacks need C signatures; hence C.
#include <openssl/ec.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/obj_mac.h>
#include <stdlib.h>
#include <string.h>

/// Signs a SHA-256 digest; writes the 32-byte big-endian r and s and returns
/// 1, or returns 0. `context` is the one given to COpenSSL_delegated_ec_key.
typedef int (*COpenSSL_digest_signer)(void *context, const unsigned char *digest, int digest_length,
                                      unsigned char *r, unsigned char *s);
/// Releases `context` when OpenSSL frees the key.
typedef void (*COpenSSL_signer_release)(void *context);

struct COpenSSL_signer {
    COpenSSL_digest_signer sign;
    COpenSSL_signer_release release;
    void *context;
};

static inline void COpenSSL_signer_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp) {
    (void)parent; (void)ad; (void)idx; (void)argl; (void)argp;
    struct COpenSSL_signer *signer = ptr;
    if (signer == NULL) return;
    if (signer->release != NULL) signer->release(signer->context);
    free(signer);
}

// Function-local statics, as for the socket BIO: the ex_data index and the
// method are made once per process.
static inline int *COpenSSL_signer_index_slot(void) {
    static int index = -1;
    return &index;
}

static inline EC_KEY_METHOD **COpenSSL_signer_method_slot(void) {
    static EC_KEY_METHOD *method;
    return &method;
}

static inline ECDSA_SIG *COpenSSL_delegated_sign_sig(const unsigned char *digest, int digest_length,
                                                    const BIGNUM *kinv, const BIGNUM *rp, EC_KEY *key) {
    (void)kinv; (void)rp;
    struct COpenSSL_signer *signer = EC_KEY_get_ex_data(key, *COpenSSL_signer_index_slot());
    if (signer == NULL) return NULL;
    unsigned char r[32], s[32];
    if (signer->sign(signer->context, digest, digest_length, r, s) != 1) return NULL;
    ECDSA_SIG *sig = ECDSA_SIG_new();
    BIGNUM *br = BN_bin2bn(r, 32, NULL), *bs = BN_bin2bn(s, 32, NULL);
    if (sig == NULL || br == NULL || bs == NULL || ECDSA_SIG_set0(sig, br, bs) != 1) {
        ECDSA_SIG_free(sig); BN_free(br); BN_free(bs);
        return NULL;
    }
    return sig;
}

static inline int COpenSSL_delegated_sign(int type, const unsigned char *digest, int digest_length,
                                          unsigned char *out, unsigned int *out_length,
                                          const BIGNUM *kinv, const BIGNUM *rp, EC_KEY *key) {
    (void)type;
    ECDSA_SIG *sig = COpenSSL_delegated_sign_sig(digest, digest_length, kinv, rp, key);
    if (sig == NULL) { *out_length = 0; return 0; }
    unsigned char *p = out;
    int n = i2d_ECDSA_SIG(sig, &p);
    ECDSA_SIG_free(sig);
    if (n <= 0) { *out_length = 0; return 0; }
    *out_length = (unsigned int)n;
    return 1;
}

static inline void COpenSSL_make_signer_method(void) {
    *COpenSSL_signer_index_slot() = EC_KEY_get_ex_new_index(0, NULL, NULL, NULL, COpenSSL_signer_free);
    EC_KEY_METHOD *m = EC_KEY_METHOD_new(EC_KEY_OpenSSL());
    if (m == NULL) return;
    int (*setup)(EC_KEY *, BN_CTX *, BIGNUM **, BIGNUM **) = NULL;
    EC_KEY_METHOD_get_sign(EC_KEY_OpenSSL(), NULL, &setup, NULL);
    EC_KEY_METHOD_set_sign(m, COpenSSL_delegated_sign, setup, COpenSSL_delegated_sign_sig);
    *COpenSSL_signer_method_slot() = m;
}

/// An EVP_PKEY for the P-256 public point (x, y; 32 bytes each) whose
/// signatures come from `sign(context, ...)`. `release(context)` runs when the
/// key is freed, also when this returns NULL.
static inline EVP_PKEY *COpenSSL_delegated_ec_key(const unsigned char *x, const unsigned char *y,
                                                  COpenSSL_digest_signer sign, COpenSSL_signer_release release,
                                                  void *context) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, COpenSSL_make_signer_method);
    struct COpenSSL_signer *signer = malloc(sizeof *signer);
    if (signer == NULL) { release(context); return NULL; }
    signer->sign = sign; signer->release = release; signer->context = context;
    EC_KEY_METHOD *method = *COpenSSL_signer_method_slot();
    EC_KEY *key = EC_KEY_new_by_curve_name(NID_X9_62_prime256v1);
    BIGNUM *bx = BN_bin2bn(x, 32, NULL), *by = BN_bin2bn(y, 32, NULL);
    EVP_PKEY *pkey = EVP_PKEY_new();
    int ok = method != NULL && key != NULL && bx != NULL && by != NULL && pkey != NULL
        && EC_KEY_set_method(key, method) == 1
        && EC_KEY_set_public_key_affine_coordinates(key, bx, by) == 1
        && EC_KEY_set_ex_data(key, *COpenSSL_signer_index_slot(), signer) == 1;
    BN_free(bx); BN_free(by);
    if (!ok) {
        // Not yet attached to the key: released here.
        if (key == NULL || EC_KEY_get_ex_data(key, *COpenSSL_signer_index_slot()) != signer) {
            COpenSSL_signer_free(NULL, signer, NULL, 0, 0, NULL);
        }
        EC_KEY_free(key); EVP_PKEY_free(pkey);
        return NULL;
    }
    if (EVP_PKEY_assign_EC_KEY(pkey, key) != 1) { EC_KEY_free(key); EVP_PKEY_free(pkey); return NULL; }
    return pkey;
}
