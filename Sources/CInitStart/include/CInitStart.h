#ifndef OUTPOST_CINITSTART_H
#define OUTPOST_CINITSTART_H

/// Unsets what start.c set for the Swift runtime before it started
/// (SWIFT_ROOT, SWIFT_DETERMINISTIC_HASHING), so outpostd and its children do
/// not inherit them. A variable that came from the environment is left alone.
void outpost_init_forget_runtime_settings(void);

#endif
