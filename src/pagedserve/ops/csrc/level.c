/* Which ISA level this library was compiled for (an index into cpu_info.ISA_LEVELS; set by ops/build.py). */
#ifndef PAGEDSERVE_LEVEL
#define PAGEDSERVE_LEVEL 0
#endif

int compiled_level(void) { return PAGEDSERVE_LEVEL; }
