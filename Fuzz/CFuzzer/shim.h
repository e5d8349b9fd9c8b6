// libFuzzer's driver (compiler-rt, LLVM 13+), linked by -sanitize=fuzzer: the fuzz targets
// call it from their own main, which SwiftPM's executable entry point needs.
#include <stddef.h>
#include <stdint.h>
int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*UserCb)(const uint8_t *Data, size_t Size));
