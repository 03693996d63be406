/*
 * demo_program.h - part 4 of the demo (demo_program.c).
 */
#ifndef EXCH_DEMO_PROGRAM_H
#define EXCH_DEMO_PROGRAM_H

/* Runs part 4 at the demo's size (--gb); 0, or -errno (-EIO: the runs'
 * results differ). */
int demo_program(double gb);

#endif
