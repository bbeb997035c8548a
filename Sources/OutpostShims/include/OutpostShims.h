#ifndef OUTPOST_SHIMS_H
#define OUTPOST_SHIMS_H
// The project's only hand-written C. Each symbol exists because Swift
// cannot import a function-like macro, or because the code must run in a
// forked child where only async-signal-safe calls are allowed.

#endif
