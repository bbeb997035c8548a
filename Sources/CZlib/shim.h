// zlib (Debian's zlib1g) for gzip-compressed log batches. deflateInit2 is a
// macro over deflateInit2_; this wrapper is what Swift can call.
#include <zlib.h>

static inline int CZlib_deflateInitGzip(z_stream *stream, int level) {
    // windowBits 15 + 16: a gzip header and trailer instead of zlib's.
    return deflateInit2(stream, level, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY);
}

static inline int CZlib_inflateInitGzip(z_stream *stream) {
    return inflateInit2(stream, 15 + 16);
}
